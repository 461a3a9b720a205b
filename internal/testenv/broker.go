package testenv

import (
	"errors"
	"net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Broker is a RabbitMQ virtual host that belongs to one test. NewBroker
// creates it; it is deleted, with everything in it, when the test ends.
type Broker struct {
	// URL is the AMQP URL of the virtual host, with credentials; pass it to
	// the code under test as its broker address.
	URL string
	// Vhost is the name of the virtual host, unescaped.
	Vhost string

	api mgmtAPI
}

// NewBroker creates a fresh virtual host named like "t-<random hex>" on the
// RabbitMQ server named by RELAY_TEST_AMQP_URL, grants the URL's user all
// permissions on it, and returns it. The virtual host is created and deleted
// through the management API at RELAY_TEST_RABBITMQ_API.
func NewBroker(t testing.TB) *Broker {
	t.Helper()
	amqpURL := requireEnv(t, envAMQPURL)
	api := newMgmtAPI(t, requireEnv(t, envRabbitAPI))

	u, err := url.Parse(amqpURL)
	if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
		t.Fatalf("testenv: %s must be an amqp:// URL, got %q", envAMQPURL, amqpURL)
	}
	user := "guest" // the AMQP URL default, as in amqp091-go
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}

	b := &Broker{Vhost: randomName("t-"), api: api}
	u.Path = "/" + b.Vhost
	u.RawPath = "/" + url.PathEscape(b.Vhost)
	b.URL = u.String()

	vhostPath := "/api/vhosts/" + url.PathEscape(b.Vhost)
	if err := api.do(t, "PUT", vhostPath, nil, nil); err != nil {
		t.Fatalf("testenv: create vhost %s: %v", b.Vhost, err)
	}
	t.Cleanup(func() {
		if err := api.do(t, "DELETE", vhostPath, nil, nil); err != nil {
			t.Errorf("testenv: delete vhost %s: %v", b.Vhost, err)
		}
	})
	perms := map[string]string{"configure": ".*", "write": ".*", "read": ".*"}
	permPath := "/api/permissions/" + url.PathEscape(b.Vhost) + "/" + url.PathEscape(user)
	if err := api.do(t, "PUT", permPath, perms, nil); err != nil {
		t.Fatalf("testenv: grant %s permissions on vhost %s: %v", user, b.Vhost, err)
	}
	return b
}

// Dial opens an AMQP connection to the broker's virtual host. It is closed
// when the test ends, unless the test closed it first.
func (b *Broker) Dial(t testing.TB) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatalf("testenv: dial vhost %s: %v", b.Vhost, err)
	}
	t.Cleanup(func() {
		// A connection that the test had closed, or the broker had forced
		// closed (CloseConnections), may report either error.
		err := conn.Close()
		var amqpErr *amqp.Error
		if errors.As(err, &amqpErr) && amqpErr.Code == amqp.ConnectionForced {
			err = nil
		}
		if err != nil && !errors.Is(err, amqp.ErrClosed) {
			t.Errorf("testenv: close connection to vhost %s: %v", b.Vhost, err)
		}
	})
	return conn
}

// DeclareQueue declares a durable classic queue with a unique name, binds it
// to exchange with routingKey, and returns its name. The exchange must
// already exist. For the default exchange "" it declares the queue named
// routingKey instead, since the default exchange routes by queue name.
func (b *Broker) DeclareQueue(t testing.TB, exchange, routingKey string) string {
	t.Helper()
	conn, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatalf("testenv: dial vhost %s: %v", b.Vhost, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("testenv: open channel: %v", err)
	}

	name := randomName("q-")
	if exchange == "" {
		name = routingKey
	}
	args := amqp.Table{"x-queue-type": "classic"}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatalf("testenv: declare queue %q: %v", name, err)
	}
	if exchange != "" {
		if err := ch.QueueBind(name, routingKey, exchange, false, nil); err != nil {
			t.Fatalf("testenv: bind queue %q to exchange %q with key %q: %v", name, exchange, routingKey, err)
		}
	}
	return name
}

// Connection is a client connection to a broker's virtual host, as the
// management API lists it.
type Connection struct {
	Name        string    // the broker's name for it, peer and local address
	ClientName  string    // the connection name the client gave
	ConnectedAt time.Time // when the broker accepted it
}

// Connections lists the client connections to the broker's virtual host
// whose client-provided connection name is clientName (all of them when it
// is empty). The list lags as CloseConnections says: a connection opened or
// closed less than that lag ago may be missing or still listed.
func (b *Broker) Connections(t testing.TB, clientName string) []Connection {
	t.Helper()
	var conns []struct {
		Name             string `json:"name"`
		ConnectedAt      int64  `json:"connected_at"` // Unix milliseconds
		ClientProperties struct {
			ConnectionName string `json:"connection_name"`
		} `json:"client_properties"`
	}
	if err := b.api.do(t, "GET", "/api/vhosts/"+url.PathEscape(b.Vhost)+"/connections", nil, &conns); err != nil {
		t.Fatalf("testenv: list connections of vhost %s: %v", b.Vhost, err)
	}
	var out []Connection
	for _, c := range conns {
		if clientName != "" && c.ClientProperties.ConnectionName != clientName {
			continue
		}
		out = append(out, Connection{Name: c.Name, ClientName: c.ClientProperties.ConnectionName, ConnectedAt: time.UnixMilli(c.ConnectedAt)})
	}
	return out
}

// CloseConnections closes the client connections to the broker's virtual
// host whose client-provided connection name is clientName (all of them when
// it is empty) through the management API, and returns how many it closed.
// Tests use it to make the code under test lose its broker connection while
// their own consumers keep theirs.
//
// The management API lists a connection only once the node has emitted
// statistics for it and the management agent has collected them, so a
// connection opened less than that lag ago may be missing from the list and
// survive. The lag is about 1 s on the node scripts/servers.sh starts (it
// shortens collect_statistics_interval and the sample retention policies)
// and up to 10 s on a broker with default settings. A test that must close a
// connection it just opened should retry until the count is nonzero.
func (b *Broker) CloseConnections(t testing.TB, clientName string) int {
	t.Helper()
	closed := 0
	for _, c := range b.Connections(t, clientName) {
		err := b.api.do(t, "DELETE", "/api/connections/"+url.PathEscape(c.Name), nil, nil)
		if errors.Is(err, errNotFound) {
			continue // closed by its client meanwhile
		}
		if err != nil {
			t.Fatalf("testenv: close connection %q: %v", c.Name, err)
		}
		closed++
	}
	return closed
}
