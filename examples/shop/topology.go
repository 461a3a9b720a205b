package main

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/examples/internal/broker"
)

// topology names the shop's broker objects. Every name starts with a
// prefix, so that several shops, or a shop and real applications, can share
// a broker.
//
//	<p>.orders     (topic)  --order.#-->  <p>.inventory.order-events   inventory's inbox
//	                        --order.#-->  <p>.audit.order-events       the event-sourced check
//	<p>.inventory  (topic)  --stock.#-->  <p>.orders.stock-replies     orders' inbox
//	<p>.dead-letters (fanout) ---------->  <p>.dead-letters            messages rejected by an inbox
type topology struct {
	OrdersExchange    string // the orders relay's RELAY_EXCHANGE
	InventoryExchange string // the inventory relay's RELAY_EXCHANGE
	InventoryQueue    string // order events, consumed by inventory
	RepliesQueue      string // inventory's replies, consumed by orders
	AuditQueue        string // order events, consumed by the check
	DeadLetters       string // exchange and queue of rejected messages
}

func newTopology(prefix string) topology {
	return topology{
		OrdersExchange:    prefix + ".orders",
		InventoryExchange: prefix + ".inventory",
		InventoryQueue:    prefix + ".inventory.order-events",
		RepliesQueue:      prefix + ".orders.stock-replies",
		AuditQueue:        prefix + ".audit.order-events",
		DeadLetters:       prefix + ".dead-letters",
	}
}

// declare creates everything, idempotently. It must run before the relays
// publish: they publish with mandatory set, and a message no queue takes
// is parked and retried, not dropped.
func (t topology) declare(ch *amqp.Channel) error {
	for _, x := range []struct{ name, kind string }{
		{t.OrdersExchange, amqp.ExchangeTopic},
		{t.InventoryExchange, amqp.ExchangeTopic},
		{t.DeadLetters, amqp.ExchangeFanout},
	} {
		if err := broker.DeclareExchange(ch, x.name, x.kind); err != nil {
			return err
		}
	}
	if err := broker.DeclareQueue(ch, t.DeadLetters, nil, t.DeadLetters, ""); err != nil {
		return err
	}
	// An inbox rejects a message whose handler keeps failing; without a
	// dead-letter exchange the broker would drop it.
	deadLetter := amqp.Table{"x-dead-letter-exchange": t.DeadLetters}
	for _, q := range []struct{ queue, exchange, key string }{
		{t.InventoryQueue, t.OrdersExchange, "order.#"},
		{t.AuditQueue, t.OrdersExchange, "order.#"},
		{t.RepliesQueue, t.InventoryExchange, "stock.#"},
	} {
		if err := broker.DeclareQueue(ch, q.queue, deadLetter, q.exchange, q.key); err != nil {
			return err
		}
	}
	return nil
}

// deadLettered returns how many messages wait in the dead-letter queue.
func (t topology) deadLettered(ch *amqp.Channel) (int, error) {
	q, err := ch.QueueDeclarePassive(t.DeadLetters, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("inspect queue %s: %w", t.DeadLetters, err)
	}
	return q.Messages, nil
}

// delete removes every queue, then every exchange the shop declared.
func (t topology) delete(ch *amqp.Channel) error {
	// A failed delete closes the channel, so the first error ends it.
	for _, q := range []string{t.InventoryQueue, t.AuditQueue, t.RepliesQueue, t.DeadLetters} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return fmt.Errorf("delete queue %s: %w", q, err)
		}
	}
	for _, x := range []string{t.OrdersExchange, t.InventoryExchange, t.DeadLetters} {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			return fmt.Errorf("delete exchange %s: %w", x, err)
		}
	}
	return nil
}
