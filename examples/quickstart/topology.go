package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/examples/internal/broker"
)

// setup creates the tables and the broker objects before anything writes or
// publishes: the relay publishes with mandatory set, so an event for an
// exchange without a bound queue would be refused and retried.
func setup(ctx context.Context, cfg config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := createTables(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	_, closeBroker, err := openTopology(cfg)
	if err != nil {
		return err
	}
	defer closeBroker()
	fmt.Fprintf(out, "setup: tables orders, demo_rolled_back; exchange %s (topic), queue %s bound with orders.#\n",
		cfg.Exchange, cfg.Queue)
	return nil
}

// connectionName is what the broker's management UI shows for every
// connection of the quickstart.
const connectionName = "outbox quickstart"

// openTopology connects to the broker, opens a channel and declares the
// exchange, the queue and its binding on it. Every declaration is
// idempotent, so the consumer repeats them on start, as real consumers do.
// The returned function closes the channel and the connection.
func openTopology(cfg config) (*amqp.Channel, func(), error) {
	ch, closeBroker, err := broker.Channel(cfg.AMQPURL, connectionName)
	if err != nil {
		return nil, nil, err
	}
	if err := broker.DeclareExchange(ch, cfg.Exchange, amqp.ExchangeTopic); err != nil {
		closeBroker()
		return nil, nil, err
	}
	if err := broker.DeclareQueue(ch, cfg.Queue, nil, cfg.Exchange, "orders.#"); err != nil {
		closeBroker()
		return nil, nil, err
	}
	return ch, closeBroker, nil
}

// teardown deletes the queue, then the exchange unless something else is
// still bound to it: on a shared broker the exchange may have other users.
func teardown(_ context.Context, cfg config, out io.Writer) error {
	ch, closeBroker, err := broker.Channel(cfg.AMQPURL, connectionName)
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
