package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// auditLog is the input of the event-sourced check: every order event the
// orders relay published, as a consumer of a queue of its own receives
// them. It keeps them in memory, which is enough for a demo; an event store
// would append them to a table. It deduplicates by message_id itself,
// because its only effect is this memory.
type auditLog struct {
	mu         sync.Mutex
	deliveries map[string]int          // message_id -> times delivered
	byOrder    map[int64][]loggedEvent // first deliveries, in arrival order
	duplicates int                     // deliveries beyond the first
	malformed  []string                // message_ids of bodies that are no order event
}

// loggedEvent is one order event as the audit received it.
type loggedEvent struct {
	MessageID string
	Type      string
	Event     orderEvent
}

func newAuditLog() *auditLog {
	return &auditLog{deliveries: map[string]int{}, byOrder: map[int64][]loggedEvent{}}
}

// run consumes queue on its own channel of conn until ctx ends, acking
// each delivery once recorded.
func (a *auditLog) run(ctx context.Context, conn *amqp.Connection, queue string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("audit: open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Qos(256, 0, false); err != nil {
		return fmt.Errorf("audit: set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(queue, "audit", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("audit: consume %s: %w", queue, err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("audit: the broker closed the channel")
			}
			a.record(d)
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("audit: ack: %w", err)
			}
		}
	}
}

func (a *auditLog) record(d amqp.Delivery) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deliveries[d.MessageId]++
	if a.deliveries[d.MessageId] > 1 {
		a.duplicates++
		return
	}
	var ev orderEvent
	// The relay sets aggregate_id on every message: the ordering key.
	aggregate, _ := d.Headers["aggregate_id"].(string)
	if err := json.Unmarshal(d.Body, &ev); err != nil || strconv.FormatInt(ev.OrderID, 10) != aggregate {
		a.malformed = append(a.malformed, d.MessageId)
		return
	}
	a.byOrder[ev.OrderID] = append(a.byOrder[ev.OrderID], loggedEvent{MessageID: d.MessageId, Type: d.Type, Event: ev})
}

// distinct is the number of different messages received.
func (a *auditLog) distinct() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.deliveries)
}

// snapshot returns copies of what the audit holds, for the check.
func (a *auditLog) snapshot() (deliveries map[string]int, byOrder map[int64][]loggedEvent, duplicates int, malformed []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	deliveries = maps.Clone(a.deliveries)
	byOrder = make(map[int64][]loggedEvent, len(a.byOrder))
	for id, evs := range a.byOrder {
		byOrder[id] = append([]loggedEvent(nil), evs...)
	}
	return deliveries, byOrder, a.duplicates, append([]string(nil), a.malformed...)
}
