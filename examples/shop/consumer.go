package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// consumer feeds one queue to one inbox and counts the outcomes: messages
// processed (the handler's transaction committed) and duplicates absorbed
// (the inbox had processed the message before, so the handler did not run).
type consumer struct {
	name  string // the inbox's consumer name: keep it stable
	queue string
	in    *inbox.Inbox
	log   *slog.Logger

	// ran is set by the handler of the delivery being handled. Handle
	// returning nil with ran unset means the inbox acked a duplicate. One
	// goroutine handles one delivery at a time, so a plain flag does.
	ran bool

	processed, duplicates atomic.Int64
}

func newConsumer(db *pgxpool.Pool, name, queue string, handler inbox.Handler, log *slog.Logger) (*consumer, error) {
	c := &consumer{name: name, queue: queue, log: log.With("consumer", name)}
	in, err := inbox.New(db, inbox.Config{
		Consumer: name,
		Handler: func(ctx context.Context, tx pgx.Tx, msg inbox.Message) error {
			err := handler(ctx, tx, msg)
			c.ran = err == nil
			return err
		},
		// The handlers write events of the order the message is about:
		// lock it first, so they are published in commit order.
		Locks:       messageAggregate,
		MaxAttempts: 5,
		Logger:      c.log,
	})
	if err != nil {
		return nil, err
	}
	c.in = in
	return c, nil
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

// run consumes the queue on its own channel of conn until ctx ends. It
// calls Handle per delivery, rather than inbox's Consume loop, to learn
// which deliveries were duplicates.
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
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case d, ok = <-deliveries:
			if !ok {
				return fmt.Errorf("%s: the broker closed the channel", c.name)
			}
		}
		c.ran = false
		err := c.in.Handle(ctx, d)
		switch {
		case err == nil && c.ran:
			c.processed.Add(1)
		case err == nil:
			c.duplicates.Add(1)
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, inbox.ErrDatabase):
			c.log.Warn("database failed; message requeued", "message_id", d.MessageId, "err", err)
			select { // let the database recover before the next delivery
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		default:
			// A failed handler: requeued, or rejected to the dead-letter
			// queue after MaxAttempts. The check at the end reports it.
			c.log.Error("message not processed", "message_id", d.MessageId, "type", d.Type, "err", err)
		}
	}
}
