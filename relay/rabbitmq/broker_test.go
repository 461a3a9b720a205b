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

// publish sends msgs and waits for the broker's answer: how many leading
// messages were confirmed, and why the first that was not was not.
func publish(b *Broker, msgs []relay.Message) (int, error) {
	answers, err := b.Publish(context.Background(), msgs).Wait(context.Background())
	n, refused := relay.Leading(answers)
	if refused != nil {
		return n, refused
	}
	return n, err
}

// answer sends msgs and returns the broker's answer for each.
func answer(t *testing.T, b *Broker, msgs []relay.Message) []relay.Answer {
	t.Helper()
	answers, err := b.Publish(context.Background(), msgs).Wait(context.Background())
	if len(answers) != len(msgs) {
		t.Fatalf("%d answers for %d messages (%v)", len(answers), len(msgs), err)
	}
	return answers
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

	// A return is the answer for its message alone: the messages around
	// it are confirmed, and the channel goes on.
	msgs := []relay.Message{message(1, "amq.direct", "bound"), message(2, "amq.direct", "nobody"), message(3, "amq.direct", "bound")}
	answers := answer(t, b, msgs)
	var ret *ReturnedError
	if !answers[0].Confirmed || !answers[2].Confirmed || answers[1].Confirmed ||
		!errors.As(answers[1].Refused, &ret) || ret.MessageID != msgs[1].MessageID || ret.Code != 312 ||
		!errors.Is(answers[1].Refused, relay.ErrRejected) {
		t.Fatalf("answers %+v; want 1 and 3 confirmed, 2 returned with 312 NO_ROUTE", answers)
	}
	if n, err := publish(b, []relay.Message{message(4, "amq.direct", "bound")}); n != 1 || err != nil {
		t.Fatalf("Publish after a return = %d, %v; want the channel still open", n, err)
	}
	got := consume(t, env.Dial(t), queue, 3)
	if rest := drain(t, env.Dial(t), queue); len(rest) != 0 {
		t.Errorf("%d more messages than 1, 3 and 4: nothing is sent twice", len(rest))
	}
	for i, want := range []int{1, 3, 4} {
		if got[i].MessageId != message(want, "", "").MessageID {
			t.Errorf("message %d is %s, want message %d", i, got[i].MessageId, want)
		}
	}
}

// TestMessagesAMQPCannotCarryAreNotSent: a field or header name over 255
// bytes, or headers larger than a frame, would make the client tear the
// connection down; such a message is refused before it is sent, and the
// others go out on the same connection.
func TestMessagesAMQPCannotCarryAreNotSent(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "k")
	b := newBroker(t, env.URL)
	long := strings.Repeat("x", 256)
	bad := []func(m *relay.Message){
		func(m *relay.Message) { m.RoutingKey = long },
		func(m *relay.Message) { m.Exchange = long },
		func(m *relay.Message) { m.Type = long },
		func(m *relay.Message) { m.ContentType = long },
		func(m *relay.Message) { m.Headers = map[string]any{long: "v"} },
		func(m *relay.Message) { m.Headers = map[string]any{"big": strings.Repeat("v", 200_000)} },
	}
	var msgs []relay.Message
	for i, spoil := range bad {
		msgs = append(msgs, message(2*i, "amq.direct", "k"))
		m := message(2*i+1, "amq.direct", "k")
		spoil(&m)
		msgs = append(msgs, m)
	}
	answers := answer(t, b, msgs)
	for i, a := range answers {
		switch {
		case i%2 == 0 && !a.Confirmed:
			t.Errorf("good message %d: %+v, want confirmed", i, a)
		case i%2 == 1 && (a.Confirmed || !errors.Is(a.Refused, relay.ErrInvalid)):
			t.Errorf("bad message %d: %+v, want refused as invalid", i, a)
		}
	}
	if n, err := publish(b, []relay.Message{message(99, "amq.direct", "k")}); n != 1 || err != nil {
		t.Fatalf("Publish after the refusals = %d, %v; want the same connection still open", n, err)
	}
	consume(t, env.Dial(t), queue, len(bad)+1)
}

// TestMissingExchangeRefusesOnlyItsMessage: the first message to an
// exchange is preceded by a check on a channel of its own, so a missing
// exchange refuses only that message; the channel that carries messages
// stays open and nothing is in doubt or sent twice.
func TestMissingExchangeRefusesOnlyItsMessage(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "k")
	b := newBroker(t, env.URL)

	answers := answer(t, b, []relay.Message{message(1, "amq.direct", "k"), message(2, "no-such-exchange", "k"), message(3, "amq.direct", "k")})
	if !answers[0].Confirmed || !answers[2].Confirmed || !errors.Is(answers[1].Refused, errMissingExchange) ||
		!errors.Is(answers[1].Refused, relay.ErrRejected) {
		t.Fatalf("answers %+v; want 1 and 3 confirmed, 2 refused: missing exchange", answers)
	}
	if n, err := publish(b, []relay.Message{message(4, "amq.direct", "k")}); n != 1 || err != nil {
		t.Fatalf("Publish after the refusal = %d, %v; want the channel still open", n, err)
	}
	got := consume(t, env.Dial(t), queue, 3)
	if rest := drain(t, env.Dial(t), queue); len(rest) != 0 {
		t.Errorf("%d messages more than 1, 3 and 4", len(rest))
	}
	if got[2].MessageId != message(4, "", "").MessageID {
		t.Errorf("last message %s, want message 4", got[2].MessageId)
	}

	// An exchange deleted after it was checked closes the channel: the
	// message is in doubt, and the error says it is the message's own.
	ch, err := env.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare("short-lived", "direct", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	var ret *ReturnedError // nothing is bound to it: answered, not in doubt
	if _, err := publish(b, []relay.Message{message(5, "short-lived", "k")}); !errors.As(err, &ret) {
		t.Fatalf("Publish to an existing exchange with no binding = %v, want returned", err)
	}
	if err := ch.ExchangeDelete("short-lived", false, false); err != nil {
		t.Fatal(err)
	}
	answers, err = b.Publish(context.Background(), []relay.Message{message(6, "short-lived", "k")}).Wait(context.Background())
	if answers[0].Confirmed || answers[0].Refused != nil || !errors.Is(err, relay.ErrRejected) {
		t.Fatalf("Publish to a deleted exchange = %+v, %v; want in doubt, the channel closed by a 404", answers, err)
	}
	b.Reset()
	if n, err := publish(b, []relay.Message{message(7, "amq.direct", "k")}); n != 1 || err != nil {
		t.Fatalf("Publish after Reset = %d, %v", n, err)
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

// TestNacks: a queue that is full and rejects publishes nacks. Among acks,
// a nack is the message's own (parked by the core, the others go on), and
// so is a single row's; a call of several messages nacked whole, as a
// quorum queue nacks while it elects a leader, or one nacked whole just
// after the broker lost a connection, leaves them in doubt (sent again from
// the position), and so does every call nacked whole while that storm
// lasts, up to nackGrace.
func TestNacks(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	conn := env.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("full", false, true, false, false, amqp.Table{"x-max-length": 1, "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	b := newBroker(t, env.URL)
	ownNack := func(what string, msgs ...relay.Message) {
		t.Helper()
		answers := answer(t, b, msgs)
		if a := answers[len(answers)-1]; !errors.Is(a.Refused, ErrNacked) || !errors.Is(a.Refused, relay.ErrRejected) {
			t.Fatalf("%s: answers %+v; want the last nacked as its own", what, answers)
		}
	}
	inDoubt := func(what string, msgs ...relay.Message) {
		t.Helper()
		answers, err := b.Publish(context.Background(), msgs).Wait(context.Background())
		for _, a := range answers {
			if a.Refused != nil || a.Confirmed {
				t.Fatalf("%s: answers %+v, %v; want every message in doubt", what, answers, err)
			}
		}
		if !errors.Is(err, ErrNacked) {
			t.Fatalf("%s: %v, want ErrNacked", what, err)
		}
		b.Reset()
	}

	ownNack("a nack among acks", message(1, "", "full"), message(2, "", "full"))
	ownNack("one row nacked alone", message(3, "", "full"))
	b.mu.Lock()
	b.lostAt = time.Now() // as the connection watcher notes a lost connection
	b.mu.Unlock()
	inDoubt("one row nacked alone just after a connection was lost (a probe)", message(3, "", "full"))
	b.mu.Lock()
	b.lostAt, b.storm = time.Time{}, nackStorm{}
	b.mu.Unlock()
	inDoubt("two rows nacked whole", message(4, "", "full"), message(5, "", "full"))
	inDoubt("one row nacked in the storm (a probe)", message(6, "", "full"))
	b.mu.Lock()
	b.storm.since = time.Now().Add(-nackGrace)
	b.mu.Unlock()
	ownNack("a storm longer than nackGrace", message(7, "", "full"), message(8, "", "full"))
}
