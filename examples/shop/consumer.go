package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// consumer feeds one queue to one inbox and counts the outcomes: messages
// processed (the handler ran and succeeded, so the inbox commits its
// transaction) and duplicates absorbed (the inbox had processed the message
// before, so the handler did not run).
type consumer struct {
	name  string // the inbox's consumer name: keep it stable
	queue string
	in    *inbox.Inbox

	// processed counts the handler's successes, whose transaction the
	// inbox commits next. Only a commit that fails after a success (the
	// database lost, or ctx ending at that moment) would count a message
	// that is then processed again when the broker redelivers it; the demo
	// does not fail its databases.
	processed, duplicates atomic.Int64
}

func newConsumer(db *pgxpool.Pool, name, queue string, handler inbox.Handler, log *slog.Logger) (*consumer, error) {
	c := &consumer{name: name, queue: queue}
	in, err := inbox.New(db, inbox.Config{
		Consumer: name,
		Handler: func(ctx context.Context, tx pgx.Tx, msg inbox.Message) error {
			if err := handler(ctx, tx, msg); err != nil {
				return err
			}
			c.processed.Add(1)
			return nil
		},
		OnDuplicate: func(string) { c.duplicates.Add(1) },
		// The handlers write events of the order the message is about:
		// lock it first, so they are published in commit order.
		Locks:       messageAggregate,
		MaxAttempts: 5,
		// A failed handler is requeued, or rejected to the dead-letter
		// queue after MaxAttempts; Consume logs it here, and the check at
		// the end reports it.
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	c.in = in
	return c, nil
}

// typed makes a handler of one payload type an inbox handler: it decodes
// the message's JSON body into T and passes it on with the message's type.
// A body that does not decode fails the attempt, like any handler error:
// after MaxAttempts the message goes to the dead-letter queue.
func typed[T any](handle func(ctx context.Context, tx pgx.Tx, eventType string, payload T) error) inbox.Handler {
	return func(ctx context.Context, tx pgx.Tx, msg inbox.Message) error {
		var payload T
		if err := json.Unmarshal(msg.Body, &payload); err != nil {
			return fmt.Errorf("decode %s: %w", msg.Type, err)
		}
		return handle(ctx, tx, msg.Type, payload)
	}
}

// messageAggregate is the aggregate a message is about, from the headers
// the relay sets on every message.
func messageAggregate(msg inbox.Message) []outbox.Aggregate {
	typ, _ := msg.Headers["aggregate_type"].(string)
	id, _ := msg.Headers["aggregate_id"].(string)
	if typ == "" || id == "" {
		return nil
	}
	return []outbox.Aggregate{{Type: typ, ID: id}}
}

// run consumes the queue on its own channel of conn with the inbox's
// Consume loop until ctx ends.
func (c *consumer) run(ctx context.Context, conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%s: open channel: %w", c.name, err)
	}
	defer ch.Close()
	if err := ch.Qos(64, 0, false); err != nil {
		return fmt.Errorf("%s: set prefetch: %w", c.name, err)
	}
	deliveries, err := ch.Consume(c.queue, c.name, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("%s: consume %s: %w", c.name, c.queue, err)
	}
	if err := c.in.Consume(ctx, deliveries); err != nil {
		return fmt.Errorf("%s: %w", c.name, err) // the broker closed the channel
	}
	return nil
}
