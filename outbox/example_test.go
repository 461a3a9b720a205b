package outbox_test

import (
	"context"
	"fmt"
	"log"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// OrderPaid is the example's event payload.
type OrderPaid struct {
	OrderID    int64 `json:"order_id"`
	TotalCents int64 `json:"total_cents"`
}

// payOrder marks an order paid and records the OrderPaid event in one
// transaction: the event is published if and only if the update commits.
func payOrder(ctx context.Context, conn *pgx.Conn, orderID int64) error {
	// Begin takes the order's ordering lock with BEGIN, before the first
	// write, so the relay publishes the order's events in commit order.
	order := outbox.Aggregate{Type: "order", ID: strconv.FormatInt(orderID, 10)}
	tx, err := outbox.Begin(ctx, conn, order)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // a no-op after Commit

	var total int64
	err = tx.QueryRow(ctx,
		`UPDATE orders SET status = 'paid' WHERE id = $1 AND status = 'placed' RETURNING total_cents`,
		orderID).Scan(&total)
	if err != nil {
		return fmt.Errorf("pay order %d: %w", orderID, err)
	}

	payload, err := outbox.JSON(OrderPaid{OrderID: orderID, TotalCents: total})
	if err != nil {
		return err
	}
	err = outbox.Write(ctx, tx, outbox.Event{
		AggregateType: order.Type,
		AggregateID:   order.ID,
		EventType:     "OrderPaid",
		RoutingKey:    "orders.paid",
		Payload:       payload,
		Headers:       map[string]any{"schema_version": 1},
	})
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func Example() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, exampleDatabaseURL)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)

	if err := payOrder(ctx, conn, 42); err != nil {
		log.Fatal(err)
	}
	// Paying twice fails in the UPDATE; the rolled-back transaction leaves
	// no event behind.
	if err := payOrder(ctx, conn, 42); err != nil {
		fmt.Println("second attempt:", err)
	}

	// What the relay will publish.
	rows, err := conn.Query(ctx, `
		SELECT aggregate_type, aggregate_id, event_type, routing_key, payload, content_type, headers::text
		FROM outbox WHERE aggregate_type = 'order' ORDER BY id`)
	if err != nil {
		log.Fatal(err)
	}
	for rows.Next() {
		var aggType, aggID, eventType, key, contentType, headers string
		var payload []byte
		if err := rows.Scan(&aggType, &aggID, &eventType, &key, &payload, &contentType, &headers); err != nil {
			log.Fatal(err)
		}
		fmt.Println(aggType, aggID, eventType, key, contentType)
		fmt.Println(string(payload), headers)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// second attempt: pay order 42: no rows in result set
	// order 42 OrderPaid orders.paid application/json
	// {"order_id":42,"total_cents":1999} {"schema_version": 1}
}
