package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// schemaSQL creates the sample service's own tables. The outbox table itself
// comes from `outbox-relay migrate` (or schema.sql), not from here.
const schemaSQL = `
CREATE TABLE IF NOT EXISTS orders (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status      text        NOT NULL,
    seq         int         NOT NULL,
    total_cents bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN orders.seq IS 'Events committed for this order so far; each event carries its own number.';

CREATE TABLE IF NOT EXISTS demo_rolled_back (
    event_id    uuid        PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE demo_rolled_back IS 'Demo bookkeeping, written after a deliberate rollback: events that must never be delivered.';
`

// setup creates the tables and the broker objects before anything writes or
// publishes: the relay publishes with mandatory set, so an event for an
// exchange without a bound queue would be refused and retried.
func setup(ctx context.Context, cfg config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.Background())
	var outbox *string
	if err := conn.QueryRow(ctx, `SELECT to_regclass('outbox')::text`).Scan(&outbox); err != nil {
		return fmt.Errorf("look for the outbox table: %w", err)
	}
	if outbox == nil {
		return errors.New("no outbox table: run `outbox-relay migrate` first")
	}
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}

	ch, closeBroker, err := openChannel(cfg.AMQPURL)
	if err != nil {
		return err
	}
	defer closeBroker()
	if err := declareTopology(ch, cfg); err != nil {
		return err
	}
	fmt.Fprintf(out, "setup: tables orders, demo_rolled_back; exchange %s (topic), queue %s bound with orders.#\n",
		cfg.Exchange, cfg.Queue)
	return nil
}

// declareTopology declares the exchange, the queue and its binding. Every
// declaration is idempotent, so the consumer repeats it on start, as real
// consumers do.
func declareTopology(ch *amqp.Channel, cfg config) error {
	if err := ch.ExchangeDeclare(cfg.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", cfg.Exchange, err)
	}
	if _, err := ch.QueueDeclare(cfg.Queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s: %w", cfg.Queue, err)
	}
	if err := ch.QueueBind(cfg.Queue, "orders.#", cfg.Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", cfg.Queue, err)
	}
	return nil
}

// teardown deletes the queue, then the exchange unless something else is
// still bound to it: on a shared broker the exchange may have other users.
func teardown(_ context.Context, cfg config, out io.Writer) error {
	ch, closeBroker, err := openChannel(cfg.AMQPURL)
	if err != nil {
		return err
	}
	defer closeBroker()
	if _, err := ch.QueueDelete(cfg.Queue, false, false, false); err != nil {
		return fmt.Errorf("delete queue %s: %w", cfg.Queue, err)
	}
	// A refused if-unused delete closes the channel with PRECONDITION_FAILED;
	// that is the expected answer for a shared exchange, not an error.
	var ae *amqp.Error
	switch err := ch.ExchangeDelete(cfg.Exchange, true, false); {
	case err == nil:
		fmt.Fprintf(out, "teardown: deleted queue %s and exchange %s\n", cfg.Queue, cfg.Exchange)
	case errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed:
		fmt.Fprintf(out, "teardown: deleted queue %s; kept exchange %s (still in use)\n", cfg.Queue, cfg.Exchange)
	default:
		return fmt.Errorf("delete exchange %s: %w", cfg.Exchange, err)
	}
	return nil
}

// openChannel connects to the broker and opens one channel; the returned
// function closes both.
func openChannel(url string) (*amqp.Channel, func(), error) {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Dial:       amqp.DefaultDial(10 * time.Second),
		Properties: amqp.Table{"connection_name": "outbox quickstart"},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("connect to broker: %w", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	return ch, func() { conn.Close() }, nil
}
