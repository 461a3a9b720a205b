package main

import (
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

func TestBadConfigurationExitsTwoNamingTheVariable(t *testing.T) {
	t.Parallel()
	base := []string{"RELAY_DATABASE_URL=postgres://relay:pg-s3cret@127.0.0.1:1/db", "RELAY_AMQP_URL=amqp://relay:mq-s3cret@127.0.0.1:1/"}
	cases := []struct {
		name, variable string
		env            []string
		args           []string
	}{
		{"missing database", "RELAY_DATABASE_URL", []string{"RELAY_AMQP_URL=amqp://x/"}, nil},
		{"missing broker", "RELAY_AMQP_URL", []string{base[0]}, nil},
		{"broker not amqp", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=http://relay:mq-s3cret@host/"}, nil},
		{"broker bad port", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:mq-s3cret@host:port/"}, nil},
		{"database unparsable", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=postgres://relay:pg-s3cret@host:port/db", base[1]}, nil},
		{"batch zero", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=0"), nil},
		{"channels zero", "RELAY_CHANNELS", append(base, "RELAY_CHANNELS=0"), nil},
		{"channels many", "RELAY_CHANNELS", append(base, "RELAY_CHANNELS=17"), nil},
		{"batch huge", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=1000000"), nil},
		{"batch text", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=many"), nil},
		{"poll text", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=soon"), nil},
		{"poll negative", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=-1s"), nil},
		{"shutdown zero", "RELAY_SHUTDOWN_TIMEOUT", append(base, "RELAY_SHUTDOWN_TIMEOUT=0s"), nil},
		{"attempts zero", "RELAY_MAX_ATTEMPTS", append(base, "RELAY_MAX_ATTEMPTS=0"), nil},
		{"lease zero", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=0s"), nil},
		{"lease tiny", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=10ms"), nil},
		{"retention negative", "RELAY_RETENTION", append(base, "RELAY_RETENTION=-1h"), nil},
		{"log level", "RELAY_LOG_LEVEL", append(base, "RELAY_LOG_LEVEL=loud"), nil},
		{"log format", "RELAY_LOG_FORMAT", append(base, "RELAY_LOG_FORMAT=xml"), nil},
		{"table injection", "RELAY_TABLE", append(base, "RELAY_TABLE=outbox; DROP TABLE users"), nil},
		{"table quoted", "RELAY_TABLE", append(base, `RELAY_TABLE="outbox"`), nil},
		{"table three parts", "RELAY_TABLE", append(base, "RELAY_TABLE=a.b.c"), nil},
		{"status bad table", "RELAY_TABLE", append(base, "RELAY_TABLE=x'y"), []string{"status"}},
		{"migrate other name", "RELAY_TABLE", append(base, "RELAY_TABLE=events"), []string{"migrate"}},
		{"exchange too long", "RELAY_EXCHANGE", append(base, "RELAY_EXCHANGE="+strings.Repeat("x", 256)), []string{"run"}},
		{"exchange too long by default", "RELAY_EXCHANGE", append(base, "RELAY_EXCHANGE="+strings.Repeat("é", 128)), nil},
		{"poll nanosecond", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=1ns"), nil},
		{"poll under a millisecond", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=999us"), nil},
		{"poll over an hour", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=61m"), nil},
		{"lease huge", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=99999h"), nil},
		{"lease over ten minutes", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=10m1s"), []string{"status"}},
		{"shutdown over an hour", "RELAY_SHUTDOWN_TIMEOUT", append(base, "RELAY_SHUTDOWN_TIMEOUT=2h"), nil},
		{"retention under ten seconds", "RELAY_RETENTION", append(base, "RELAY_RETENTION=9s"), nil},
		{"retention over ten years", "RELAY_RETENTION", append(base, "RELAY_RETENTION=87601h"), nil},
		{"database blank", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL= ", base[1]}, nil},
		{"database blank for status", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=\t "}, []string{"status"}},
		{"database unencoded @", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=postgres://relay:pg@s3cret@127.0.0.1:1/db", base[1]}, nil},
		{"database unencoded / and @", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=postgres://relay:12/s3cret@127.0.0.1:1/db", base[1]}, []string{"migrate"}},
		{"database dsn spaced password", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=host=127.0.0.1 password = pg-s3cret sslmode=bogus", base[1]}, nil},
		{"database dsn quoted password", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=host=127.0.0.1 password = 'pg s3cret' sslmode=bogus", base[1]}, nil},
		{"database dsn unquoted space", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=host=127.0.0.1 password=pg s3cret sslmode=disable", base[1]}, nil},
		{"broker port huge", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:mq-s3cret@127.0.0.1:99999/"}, nil},
		{"broker port zero", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqps://relay:mq-s3cret@127.0.0.1:0/"}, nil},
		{"broker second port huge", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:mq-s3cret@h1:5672/,amqp://relay:mq-s3cret@h2:65536/"}, nil},
		{"broker unencoded / and @", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:12/mq-s3cret@host/"}, nil},
		{"broker comma in password", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:12,mq-s3cret@host/"}, nil},
		{"batch over the bound", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=10001"), nil},
		{"bare names are not read", "RELAY_DATABASE_URL", []string{base[0][len("RELAY_"):], base[1]}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, out := runCmd(t, c.env, c.args...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], c.variable) {
				t.Fatalf("exit %d, output %q; want exit 2 and one line naming %s", code, out, c.variable)
			}
			if strings.Contains(out, "s3cret") {
				t.Fatalf("output shows a password: %q", out)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"frobnicate"}, {"status", "--yaml"}, {"run", "extra"}} {
		if code, out := runCmd(t, nil, args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, out)
		}
	}
	code, out := runCmd(t, nil, "help")
	if code != 0 {
		t.Fatalf("help: exit %d", code)
	}
	// Every variable the relay reads is documented in help.
	for _, v := range []string{"DATABASE_URL", "AMQP_URL", "TABLE", "EXCHANGE", "CHANNELS", "BATCH_SIZE", "POLL_INTERVAL", "MAX_ATTEMPTS",
		"LEASE_TIMEOUT", "REPLICA_NAME", "RETENTION", "HTTP_ADDR", "LOG_LEVEL", "LOG_FORMAT", "SHUTDOWN_TIMEOUT"} {
		if !strings.Contains(out, "RELAY_"+v) {
			t.Errorf("help does not mention RELAY_%s", v)
		}
	}
	for _, args := range [][]string{{"run", "-h"}, {"migrate", "-h"}, {"status", "-h"}, {"version"}} {
		if code, out := runCmd(t, nil, args...); code != 0 || out == "" {
			t.Errorf("%v: exit %d, output %q", args, code, out)
		}
	}
}

// setEnv leaves, for the rest of the test, only kv set of the variables the
// relay reads, and of their names without RELAY_.
func setEnv(t *testing.T, kv ...string) {
	t.Helper()
	for _, f := range reflect.VisibleFields(reflect.TypeFor[env]()) {
		for _, name := range []string{varName(f), f.Tag.Get("envconfig")} {
			t.Setenv(name, "") // restored after the test
			if err := os.Unsetenv(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		t.Setenv(k, v)
	}
}

// TestEnvReadsOnlyRelayVariables: a sidecar shares its pod's environment
// with the service, whose DATABASE_URL, TABLE or RETENTION are not the
// relay's.
func TestEnvReadsOnlyRelayVariables(t *testing.T) {
	setEnv(t, "DATABASE_URL=postgres://app@127.0.0.1:1/app", "TABLE=users", "RETENTION=-5h", "AMQP_URL=amqp://app@127.0.0.1:1/",
		"HTTP_ADDR=:8080", "LOG_LEVEL=loud", "BATCH_SIZE=0")
	if _, err := loadEnv(); err == nil || !strings.Contains(err.Error(), "RELAY_DATABASE_URL: required") {
		t.Fatalf("loadEnv with DATABASE_URL but no RELAY_DATABASE_URL: %v, want RELAY_DATABASE_URL required", err)
	}
	t.Setenv("RELAY_DATABASE_URL", "postgres://relay@127.0.0.1:1/orders")
	e, err := loadEnv()
	if err != nil {
		t.Fatalf("loadEnv read a variable without RELAY_: %v", err)
	}
	if e.DatabaseURL != "postgres://relay@127.0.0.1:1/orders" || e.Table != "outbox" || e.Retention != 168*time.Hour ||
		e.AMQPURL != "" || e.HTTPAddr != "" || e.LogLevel != "info" || e.BatchSize != 500 {
		t.Fatalf("loadEnv read variables without RELAY_: %+v", *e)
	}
}

// TestConfigBoundsAreInclusive sets every bounded variable to the edge of
// its range, which must be accepted.
func TestConfigBoundsAreInclusive(t *testing.T) {
	for _, edge := range [][]string{
		{"RELAY_POLL_INTERVAL=1ms", "RELAY_LEASE_TIMEOUT=100ms", "RELAY_RETENTION=0", "RELAY_SHUTDOWN_TIMEOUT=1ns",
			"RELAY_BATCH_SIZE=1", "RELAY_CHANNELS=1", "RELAY_MAX_ATTEMPTS=1", "RELAY_AMQP_URL=amqp://relay@127.0.0.1:1/"},
		{"RELAY_POLL_INTERVAL=1h", "RELAY_LEASE_TIMEOUT=10m", "RELAY_RETENTION=10s", "RELAY_SHUTDOWN_TIMEOUT=1h",
			"RELAY_BATCH_SIZE=10000", "RELAY_CHANNELS=16", "RELAY_EXCHANGE=" + strings.Repeat("x", 255),
			"RELAY_AMQP_URL=amqps://relay@h1:65535/,amqp://relay:p%40ss@h2/"},
		{"RELAY_RETENTION=87600h", "RELAY_AMQP_URL=amqp://relay:S3cret@PW@127.0.0.1/"},
	} {
		setEnv(t, append(edge, "RELAY_DATABASE_URL=postgres://relay:p%40ss@127.0.0.1:1/orders")...)
		e, err := loadEnv()
		if err == nil {
			_, err = e.relayConfig()
		}
		if err == nil {
			_, err = e.brokerConfig()
		}
		if err != nil {
			t.Errorf("%q: %v", edge, err)
		}
	}
}

// TestPasswordsNeverInConfigErrors tries database and broker URLs, valid
// or not, and looks for the password in the errors loadEnv and
// brokerConfig return and in what the relay logs of them.
func TestPasswordsNeverInConfigErrors(t *testing.T) {
	const pw = "S3cretPW" // and, split by reserved characters, S3cret and PWtail
	cases := []struct{ variable, value string }{
		{"RELAY_DATABASE_URL", "postgres://relay:S3cretPW@127.0.0.1:port/orders"},
		{"RELAY_DATABASE_URL", "postgres://relay:S3cret%40PWtail@127.0.0.1/orders?sslmode=bogus"},
		{"RELAY_DATABASE_URL", "postgres://relay:S3cret@PWtail@127.0.0.1/orders"},
		{"RELAY_DATABASE_URL", "postgres://relay:S3cret@PWtail@h1,h2:5433/orders"},
		{"RELAY_DATABASE_URL", "postgres://relay:S3cret/PWtail@127.0.0.1/orders"},
		{"RELAY_DATABASE_URL", "postgres://relay:S3cretPW@h1:1,h2:2,h3:3:4/orders"},
		{"RELAY_DATABASE_URL", "postgres://relay@127.0.0.1/orders?password=S3cretPW&sslmode=bogus"},
		{"RELAY_DATABASE_URL", "host=127.0.0.1 password=S3cretPW sslmode=bogus"},
		{"RELAY_DATABASE_URL", "host=127.0.0.1 password = S3cretPW sslmode=bogus"},
		{"RELAY_DATABASE_URL", "host=127.0.0.1 password='S3cret PWtail' sslmode=bogus"},
		{"RELAY_DATABASE_URL", "host=127.0.0.1 password = 'S3cret PWtail' port=x"},
		{"RELAY_DATABASE_URL", "host=127.0.0.1 password=S3cret PWtail"},
		{"RELAY_AMQP_URL", "amqp://relay:S3cretPW@127.0.0.1:99999/"},
		{"RELAY_AMQP_URL", "amqp://relay:S3cretPW@127.0.0.1:port/"},
		{"RELAY_AMQP_URL", "amqp://relay:S3cret%2FPWtail@127.0.0.1:99999/"},
		{"RELAY_AMQP_URL", "amqp://relay:S3cret@PWtail@127.0.0.1:0/"},
		{"RELAY_AMQP_URL", "amqp://relay:1234/S3cretPW@127.0.0.1/"},
		{"RELAY_AMQP_URL", "amqp://relay:1234#S3cretPW@127.0.0.1/"},
		{"RELAY_AMQP_URL", "amqp://relay:1234?S3cretPW@127.0.0.1/"},
		{"RELAY_AMQP_URL", "amqp://relay:1234,S3cretPW@127.0.0.1/"},
		{"RELAY_AMQP_URL", "http://relay:S3cretPW@127.0.0.1/"},
		{"RELAY_AMQP_URL", "amqp://relay@127.0.0.1/,amqps://relay:S3cretPW@127.0.0.1:70000/"},
	}
	for _, c := range cases {
		setEnv(t, "RELAY_DATABASE_URL=postgres://relay@127.0.0.1:1/orders", "RELAY_AMQP_URL=amqp://relay@127.0.0.1:1/", c.variable+"="+c.value)
		e, err := loadEnv()
		if err == nil {
			_, err = e.brokerConfig()
		}
		if err == nil {
			t.Errorf("%s=%q accepted", c.variable, c.value)
			continue
		}
		if !strings.HasPrefix(err.Error(), c.variable+": ") {
			t.Errorf("%s=%q: error %q does not start with the variable", c.variable, c.value, err)
		}
		shown := []string{err.Error()}
		if c.variable == "RELAY_DATABASE_URL" {
			shown = append(shown, postgres.Describe(c.value))
		} else {
			for u := range strings.SplitSeq(c.value, ",") {
				shown = append(shown, rabbitmq.Redact(u))
			}
		}
		for _, text := range shown {
			for _, piece := range []string{pw, "S3cret", "PWtail"} {
				if strings.Contains(text, piece) {
					t.Errorf("%s=%q: %q shows %q", c.variable, c.value, text, piece)
				}
			}
		}
	}
}

// TestHTTPServerLimits checks the limits on the probes' and metrics'
// server, which listens on all interfaces in the image.
func TestHTTPServerLimits(t *testing.T) {
	t.Parallel()
	s := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 ||
		s.ReadTimeout > time.Minute || s.WriteTimeout > time.Minute || s.IdleTimeout > 5*time.Minute {
		t.Errorf("timeouts: read header %s, read %s, write %s, idle %s; want each set, up to a minute (idle 5)",
			s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout, s.IdleTimeout)
	}
	// A request whose headers pass the limit is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close(); <-done })
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for size, want := range map[int]int{1 << 10: http.StatusOK, 32 << 10: http.StatusRequestHeaderFieldsTooLarge} {
		req, err := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Padding", strings.Repeat("x", size))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%d bytes of headers: %s, want %d", size, resp.Status, want)
		}
	}
}
