package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newBroker(t *testing.T, urls ...string) *Broker {
	t.Helper()
	b, err := New(Config{URLs: urls})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// publish sends msgs and waits for the broker's answer.
func publish(b *Broker, msgs []relay.Message) (int, error) {
	return b.Publish(context.Background(), msgs).Wait(context.Background())
}

func message(i int, exchange, key string) relay.Message {
	return relay.Message{
		Exchange: exchange, RoutingKey: key,
		MessageID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Type: "Tested", ContentType: "application/octet-stream",
		Timestamp: time.Unix(1_700_000_000+int64(i), 0),
		Headers:   map[string]any{"aggregate_type": "t", "aggregate_id": "1", "outbox_id": int64(i), "f": 1.5, "b": true},
		Body:      []byte{byte(i), 0, 0xff, '\n'},
	}
}

func consume(t *testing.T, conn *amqp.Connection, queue string, n int) []amqp.Delivery {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var out []amqp.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		out = append(out, d)
	}
	if len(out) != n {
		t.Fatalf("got %d messages from %s, want %d", len(out), queue, n)
	}
	return out
}

// drain returns what is left in the queue.
func drain(t *testing.T, conn *amqp.Connection, queue string) []amqp.Delivery {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

func TestPublishConfirmedWithEveryProperty(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "k")
	b := newBroker(t, env.URL)

	msgs := []relay.Message{message(1, "amq.direct", "k"), message(2, "amq.direct", "k"), message(3, "amq.direct", "k")}
	n, err := publish(b, msgs)
	if n != 3 || err != nil {
		t.Fatalf("Publish = %d, %v; want 3, nil", n, err)
	}
	got := consume(t, env.Dial(t), queue, 3)
	for i, d := range got {
		m := msgs[i]
		if d.MessageId != m.MessageID || d.Type != m.Type || d.ContentType != m.ContentType ||
			!d.Timestamp.Equal(m.Timestamp) || d.DeliveryMode != amqp.Persistent ||
			!reflect.DeepEqual(d.Body, m.Body) || !reflect.DeepEqual(map[string]any(d.Headers), m.Headers) {
			t.Errorf("message %d arrived as %+v, want %+v", i, d, m)
		}
	}
}

func TestUnroutableIsNotConfirmed(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "bound")
	b := newBroker(t, env.URL)

	msgs := []relay.Message{message(1, "amq.direct", "bound"), message(2, "amq.direct", "nobody"), message(3, "amq.direct", "bound")}
	n, err := publish(b, msgs)
	var ret *ReturnedError
	if n != 1 || !errors.As(err, &ret) || ret.MessageID != msgs[1].MessageID || ret.Code != 312 {
		t.Fatalf("Publish = %d, %v; want 1 and the second message returned with 312 NO_ROUTE", n, err)
	}
	// Nothing more is sent until the caller resets: a later message must
	// not overtake the returned one.
	if n, err := publish(b, msgs[2:]); n != 0 || !errors.Is(err, errAwaitingReset) {
		t.Fatalf("Publish after a return without Reset = %d, %v; want it refused", n, err)
	}
	b.Reset()
	if n, err := publish(b, msgs[2:]); n != 1 || err != nil {
		t.Fatalf("Publish after Reset = %d, %v", n, err)
	}
	consume(t, env.Dial(t), queue, 3) // 1 and 3, then 3 again: the core republishes after a failure
}

func TestMissingExchangeClosesOnlyTheChannel(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "k")
	b := newBroker(t, env.URL)

	// The 404 closes the channel, usually before the first message's confirm
	// (the broker confirms persistent messages after writing them), so the
	// first is confirmed or in doubt, never reported lost.
	n, err := publish(b, []relay.Message{message(1, "amq.direct", "k"), message(2, "no-such-exchange", "k")})
	if n > 1 || err == nil {
		t.Fatalf("Publish = %d, %v; want at most 1 and an error", n, err)
	}
	b.Reset()
	n, err = publish(b, []relay.Message{message(1, "amq.direct", "k"), message(3, "amq.direct", "k")})
	if n != 2 || err != nil {
		t.Fatalf("Publish on a fresh channel = %d, %v", n, err)
	}
	got := consume(t, env.Dial(t), queue, 2)
	got = append(got, drain(t, env.Dial(t), queue)...) // message 1 twice if the first attempt reached the queue
	if last := got[len(got)-1].MessageId; last != message(3, "", "").MessageID {
		t.Fatalf("last message %s, want message 3", last)
	}
}

func TestReconnectsAfterConnectionsClosed(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "", "q")
	_ = queue
	b := newBroker(t, env.URL)
	if n, err := publish(b, []relay.Message{message(1, "", "q")}); n != 1 || err != nil {
		t.Fatalf("Publish = %d, %v", n, err)
	}
	// The management API lists a connection a little after it opens.
	deadline := time.Now().Add(20 * time.Second)
	for env.CloseConnections(t, "outbox-relay") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the relay's connection never appeared in the management API")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The closed connection fails at most one call; later calls reconnect.
	published := 0
	for i := 2; published == 0 && i < 100; i++ {
		n, err := publish(b, []relay.Message{message(i, "", "q")})
		published += n
		if err != nil {
			b.Reset() // as the relay does after any failure
		}
		time.Sleep(10 * time.Millisecond)
	}
	if published != 1 {
		t.Fatalf("no publish succeeded after the connection was closed")
	}
}

func TestTriesEveryURL(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	env.DeclareQueue(t, "", "q")
	b := newBroker(t, "amqp://guest:secret@127.0.0.1:1/", env.URL)
	if n, err := publish(b, []relay.Message{message(1, "", "q")}); n != 1 || err != nil {
		t.Fatalf("Publish = %d, %v; want the second URL to be used", n, err)
	}

	dead := newBroker(t, "amqp://guest:secret@127.0.0.1:1/", "amqp://guest:secret@127.0.0.1:2/")
	_, err := publish(dead, []relay.Message{message(1, "", "q")})
	if err == nil {
		t.Fatal("Publish with no reachable broker succeeded")
	}
	if s := err.Error(); !strings.Contains(s, "127.0.0.1:1") || !strings.Contains(s, "127.0.0.1:2") || strings.Contains(s, "secret") {
		t.Fatalf("error %q should name both URLs without the password", s)
	}
}

func TestParseURLs(t *testing.T) {
	t.Parallel()
	urls, err := ParseURLs(" amqp://a/ , amqps://u:p@b:5671/v ")
	if err != nil || len(urls) != 2 {
		t.Fatalf("ParseURLs = %v, %v", urls, err)
	}
	for _, bad := range []string{"", " , ", "http://x/", "amqp://u:p@host:notaport/"} {
		if _, err := ParseURLs(bad); err == nil {
			t.Errorf("ParseURLs(%q) accepted", bad)
		} else if strings.Contains(err.Error(), ":p@") {
			t.Errorf("ParseURLs(%q) error leaks the password: %v", bad, err)
		}
	}
}
