package relay_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
)

func TestRelayPublishesEveryRowOnceInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 3000, 17)
	recorded := make(chan relay.Position, 100)
	stop := run(t, relay.Config{BatchSize: 256, Hooks: relay.Hooks{Recorded: func(p relay.Position, _ int) {
		select {
		case recorded <- p:
		default:
		}
	}}}, b.store, b.broker)

	b.write(t, "b", 100, 17) // rows written while it runs arrive too
	seen := b.delivered(t, 3100)
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if dups := duplicates(b.rest(t, seen)); dups != 0 {
		t.Fatalf("%d duplicates without faults", dups)
	}
}

// faulty wraps the real broker and, the first time a flight holding one of
// the target rows is waited for, reports only the rows before it confirmed,
// as a connection lost mid-flight does: the kind of fault a real broker
// cannot be made to produce on demand at an exact message.
type faulty struct {
	relay.Publisher
	mu      sync.Mutex
	targets map[int64]bool // outbox ids still armed
}

var errInjected = errors.New("injected failure")

func (f *faulty) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	return &faultyConfirmation{Confirmation: f.Publisher.Publish(ctx, msgs), f: f, msgs: msgs}
}

type faultyConfirmation struct {
	relay.Confirmation
	f    *faulty
	msgs []relay.Message
}

func (c *faultyConfirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	answers, err := c.Confirmation.Wait(ctx)
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	for i, m := range c.msgs {
		if id := m.Headers["outbox_id"].(int64); c.f.targets[id] && answers[i].Confirmed {
			delete(c.f.targets, id)
			// Everything from i on reached the broker but is in doubt.
			for j := i; j < len(answers); j++ {
				answers[j] = relay.Answer{}
			}
			return answers, errInjected
		}
	}
	return answers, err
}

func TestRelayRepublishesFromTheFirstUnconfirmedRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 1000, 7)
	const batch = 100
	pub := &faulty{Publisher: b.broker, targets: map[int64]bool{1: true, 250: true, 999: true}}
	failed := make(chan error, 10)
	stop := run(t, relay.Config{BatchSize: batch, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
		Hooks: relay.Hooks{RoundFailed: func(err error) { failed <- err }}}, b.store, pub)

	seen := b.delivered(t, 1000)
	// The last target's first copy arrives before the relay learns of its
	// failure: wait for the three failed rounds, and for the rows in doubt
	// after the last one to be published again and recorded.
	for i := range 3 {
		select {
		case <-failed:
		case <-time.After(30 * time.Second):
			t.Fatalf("%d failed rounds, want 3", i)
		}
	}
	eventually(t, "every row recorded after the last failure", func() bool {
		st, err := b.store.Admin().Status(context.Background())
		return err == nil && st.Pending == 0
	})
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	seen = b.rest(t, seen)
	if n := len(failed); n != 0 { // the hook runs in the loop: all are in by now
		t.Fatalf("%d failed rounds, want the 3 injected", 3+n)
	}
	// Each failure republishes at least its target row, which reached the
	// broker, and at most the in-flight window (two batches).
	if dups, most := duplicates(seen), 3*2*batch; dups < 3 || dups > most {
		t.Fatalf("%d duplicates, want between 3 and %d (a window per failure)", dups, most)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []relay.Config{
		{BatchSize: -1}, {BatchSize: 10001}, {PollInterval: -time.Second},
		{PollInterval: time.Millisecond, MinPoll: time.Second}, {RetryMin: time.Second, RetryMax: time.Millisecond},
	} {
		_, err := relay.New(cfg, nil, nil)
		var ce *relay.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("New(%+v) = %v, want a ConfigError", cfg, err)
		}
	}
}

// TestRelayMapsEveryProperty checks the published message against the
// contract's table, field by field, for a row with every column set and a
// minimal row.
func TestRelayMapsEveryProperty(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	topicQueue := b.amqp.DeclareQueue(t, "amq.topic", "orders.placed")
	payload := []byte{0x00, 0xff, 0xfe, '{', '}', 0x80, '\n'} // not UTF-8: must pass unchanged
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, content_type, headers)
VALUES ('order', '42', 'OrderPlaced', 'amq.topic', 'orders.placed', $1, 'application/x-test', '{"tenant":"acme","n":7,"ratio":0.25,"ok":false,"outbox_id":"spoof"}')`, payload); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', '43', 'OrderPaid', 'events', '{"id":43}')`); err != nil {
		t.Fatal(err)
	}
	type row struct {
		id          int64
		eventID, ct string
		created     time.Time
	}
	var rows []row
	res, err := b.pool.Query(ctx, `SELECT id, event_id::text, content_type, created_at FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var r row
		if err := res.Scan(&r.id, &r.eventID, &r.ct, &r.created); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	if res.Err() != nil || len(rows) != 2 {
		t.Fatalf("rows %v, %v", rows, res.Err())
	}

	stop := run(t, relay.Config{}, b.store, b.broker)
	defer stop()
	get := func(queue string) amqp.Delivery { return b.getOne(t, queue) }

	full := get(topicQueue)
	checks := []struct {
		field     string
		got, want any
	}{
		{"exchange", full.Exchange, "amq.topic"},
		{"routing key", full.RoutingKey, "orders.placed"},
		{"body", string(full.Body), string(payload)},
		{"message_id", full.MessageId, rows[0].eventID},
		{"type", full.Type, "OrderPlaced"},
		{"content_type", full.ContentType, "application/x-test"},
		{"timestamp", full.Timestamp.Unix(), rows[0].created.Unix()},
		{"delivery_mode", full.DeliveryMode, uint8(2)},
		{"headers", map[string]any(full.Headers), map[string]any{
			"tenant": "acme", "n": int64(7), "ratio": 0.25, "ok": false,
			"aggregate_type": "order", "aggregate_id": "42", "outbox_id": rows[0].id,
		}},
	}
	minimal := get("events")
	checks = append(checks, []struct {
		field     string
		got, want any
	}{
		{"NULL exchange -> RELAY_EXCHANGE", minimal.Exchange, ""},
		{"default content_type", minimal.ContentType, "application/json"},
		{"minimal message_id", minimal.MessageId, rows[1].eventID},
		{"minimal headers", map[string]any(minimal.Headers), map[string]any{"aggregate_type": "order", "aggregate_id": "43", "outbox_id": rows[1].id}},
	}...)
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %#v, want %#v", c.field, c.got, c.want)
		}
	}
}
