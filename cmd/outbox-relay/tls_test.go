package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// withQuery returns rawURL with its host replaced by host (if not empty)
// and its query parameters set (an empty value removes one).
func withQuery(t *testing.T, rawURL, host string, params map[string]string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		u.Host = host + ":" + u.Port()
	}
	q := u.Query()
	for k, v := range params {
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// TestTLS runs the relay over TLS to a PostgreSQL and a RabbitMQ of the
// test's own, both with certificates made at test time (a CA, a server
// certificate for localhost, a client certificate), both requiring the
// client's: with the CA, the host name and the client certificate it
// delivers every event; with a wrong CA, a wrong host name or no client
// certificate it never connects, and says why, naming the server.
func TestTLS(t *testing.T) {
	t.Parallel()
	files := testenv.NewTLSFiles(t, "postgres")
	pg := testenv.NewPostgresServerWith(t, testenv.PostgresOptions{TLS: files})
	node := testenv.NewRabbitServerWith(t, testenv.RabbitOptions{TLS: files})
	db := pg.Database(t)
	dbHost, amqpHost := hostPort(t, db), hostPort(t, node.TLSURL)

	t.Run("verified", func(t *testing.T) {
		r := newRigOnNode(t, db, node.TLSURL, node.URL, nil)
		r.write(t, 2)
		p := start(t, r.env)
		r.wrote(t, 200)
		r.stopWrites()
		r.drained(t)
		stopClean(t, p)
		r.check(t, 0)
	})

	bad := []struct {
		name, host string
		params     map[string]string
		pgWant     string // in the error of a command against the database
		amqpWant   string // in the relay's log against the broker
		// amqpOr, if set, may come instead of amqpWant: with TLS 1.3 the
		// broker refuses a missing client certificate after the handshake,
		// and amqp091-go reports either its alert or the connection it
		// closed on it, whichever its reader and writer see first.
		amqpOr string
	}{
		{"wrong CA", "", map[string]string{"sslrootcert": files.OtherCA, "cacertfile": files.OtherCA},
			"certificate signed by unknown authority", "certificate signed by unknown authority", ""},
		{"wrong host name", "127.0.0.1", nil,
			"cannot validate certificate for 127.0.0.1", "cannot validate certificate for 127.0.0.1", ""},
		{"no client certificate", "", map[string]string{"sslcert": "", "sslkey": "", "certfile": "", "keyfile": ""},
			"connection requires a valid client certificate", "certificate required", "use of closed network connection"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			badDB := withQuery(t, db, c.host, onlyPrefixed(c.params, "ssl"))
			code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + badDB}, "status")
			host := dbHost
			if c.host != "" {
				host = strings.Replace(dbHost, "localhost", c.host, 1)
			}
			if code != 1 || !strings.Contains(out, c.pgWant) || !strings.Contains(out, host) {
				t.Fatalf("status over TLS with a %s: exit %d, want 1 with %q naming %s: %s", c.name, code, c.pgWant, host, out)
			}
			t.Logf("database: %s", strings.TrimSpace(out))
			badAMQP := withQuery(t, node.TLSURL, c.host, onlyPrefixed(c.params, "cacertfile", "certfile", "keyfile"))
			p := start(t, []string{"RELAY_DATABASE_URL=" + db, "RELAY_AMQP_URL=" + badAMQP, "RELAY_REPLICA_NAME=tls-" + strings.ReplaceAll(c.name, " ", "-")})
			if c.amqpOr == "" {
				p.waitLog(c.amqpWant, 30*time.Second)
			} else {
				eventually(t, fmt.Sprintf("the relay logs %q or %q", c.amqpWant, c.amqpOr), func() bool {
					log := p.log()
					return strings.Contains(log, c.amqpWant) || strings.Contains(log, c.amqpOr)
				})
			}
			if strings.Contains(p.log(), "connected to broker") {
				t.Fatalf("the relay connected to the broker with a %s:\n%s", c.name, p.log())
			}
			host = amqpHost
			if c.host != "" {
				host = strings.Replace(amqpHost, "localhost", c.host, 1)
			}
			if log := p.log(); !strings.Contains(log, host) || strings.Contains(log, "guest:guest") {
				t.Errorf("the broker's TLS failure does not name %s, or shows the password:\n%s", host, log)
			}
			for _, line := range strings.Split(p.log(), "\n") {
				if strings.Contains(line, c.amqpWant) || c.amqpOr != "" && strings.Contains(line, c.amqpOr) {
					t.Logf("broker: %s", line)
					break
				}
			}
			stopClean(t, p)
		})
	}
}

// hostPort returns the host:port of rawURL.
func hostPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// onlyPrefixed returns the entries of params whose key starts with one of
// prefixes.
func onlyPrefixed(params map[string]string, prefixes ...string) map[string]string {
	out := map[string]string{}
	for k, v := range params {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}
