package inbox

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// TestLocksOrderTheHandlersEvents: with Config.Locks, the message's
// transaction takes the named aggregates' ordering locks before the
// inbox's own first write, so the events the handler writes record them;
// an event of another aggregate is refused.
func TestLocksOrderTheHandlersEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var refused error
	handler := func(ctx context.Context, tx pgx.Tx, msg Message) error {
		event := func(id string) outbox.Event {
			return outbox.Event{AggregateType: "order", AggregateID: id, EventType: "Replied", RoutingKey: "rk"}
		}
		refused = outbox.Write(ctx, tx, event("other"))
		return outbox.Write(ctx, tx, event(string(msg.Body)))
	}
	in := b.newInbox(t, handler, Config{Locks: func(msg Message) []outbox.Aggregate {
		return []outbox.Aggregate{{Type: "order", ID: string(msg.Body)}}
	}})
	b.publish(t, amqp.Publishing{MessageId: newID(), Body: []byte("42")})
	deliveries, _ := b.consume(t, workQueue)
	if err := in.Handle(ctx, next(t, deliveries)); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(refused, outbox.ErrNotLocked) {
		t.Errorf("event of an unlocked aggregate: %v, want ErrNotLocked", refused)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox WHERE aggregate_id = '42'
		AND outbox_aggregate_key(aggregate_type, aggregate_id)::text = ANY (string_to_array(lock_keys, ','))`); n != 1 {
		t.Errorf("%d events recording their aggregate's lock, want 1", n)
	}
}
