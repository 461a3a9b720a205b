package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// inventoryService owns the inventory database: stock, reservations, a
// read model of orders (order_view, order_view_items), an inbox and an
// outbox. It learns about orders only from order events, through its
// inbox, and answers OrderPlaced through its outbox, which the inventory
// relay publishes.
type inventoryService struct {
	db *pgxpool.Pool
}

// Restocking: every second a supplier delivers restockUnits of each product
// whose free stock is below restockBelow. Demand outruns it, so orders
// regularly find a product short and the saga has to compensate.
const (
	restockEvery = time.Second
	restockUnits = 5
	restockBelow = 15
)

// advanceViewSQL applies one event to the read model. It matches only when
// the event's version follows the view's: a guard, not the deduplication
// (the inbox does that), which would catch an event applied twice or out
// of order.
const advanceViewSQL = `
UPDATE order_view SET status = $3, version = $2
WHERE order_id = $1 AND version = $2 - 1`

// HandleOrderEvent is the handler of inventory's inbox. The inbox runs it
// once per order event, on the transaction that records the event as
// processed: the read model, the reservation and the reply commit together
// with that record, or not at all.
func (s *inventoryService) HandleOrderEvent(ctx context.Context, tx pgx.Tx, eventType string, ev orderEvent) error {
	switch eventType {
	case OrderCreated:
		_, err := tx.Exec(ctx, `INSERT INTO order_view (order_id, status, version) VALUES ($1, 'open', $2)`, ev.OrderID, ev.Version)
		return err
	case ItemAdded:
		if err := advanceView(ctx, tx, ev, statusOpen); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
INSERT INTO order_view_items (order_id, sku, qty) VALUES ($1, $2, $3)
ON CONFLICT (order_id, sku) DO UPDATE SET qty = order_view_items.qty + excluded.qty`, ev.OrderID, ev.SKU, ev.Qty)
		return err
	case OrderPlaced:
		if err := advanceView(ctx, tx, ev, statusPlaced); err != nil {
			return err
		}
		return reserve(ctx, tx, ev)
	case OrderConfirmed:
		return advanceView(ctx, tx, ev, statusConfirmed)
	case OrderCancelled:
		return advanceView(ctx, tx, ev, statusCancelled)
	default:
		return nil // an event this version does not know: nothing to do
	}
}

func advanceView(ctx context.Context, tx pgx.Tx, ev orderEvent, status string) error {
	tag, err := tx.Exec(ctx, advanceViewSQL, ev.OrderID, ev.Version, status)
	if err != nil {
		return fmt.Errorf("update view of order %d: %w", ev.OrderID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("order %d: event version %d does not follow the view's", ev.OrderID, ev.Version)
	}
	return nil
}

// reserve is the first half of the saga: reserve all of a placed order's
// items, or none, and reply StockReserved or StockShort. The stock rows are
// locked in sku order, so two reservations cannot deadlock.
func reserve(ctx context.Context, tx pgx.Tx, ev orderEvent) error {
	skus := make([]string, len(ev.Items))
	for i, it := range ev.Items {
		skus[i] = it.SKU
	}
	free := map[string]int{}
	rows, _ := tx.Query(ctx, `SELECT sku, on_hand - reserved FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus)
	var sku string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&sku, &n}, func() error { free[sku] = n; return nil }); err != nil {
		return fmt.Errorf("lock stock: %w", err)
	}
	var missing []item
	for _, it := range ev.Items {
		if free[it.SKU] < it.Qty {
			missing = append(missing, item{SKU: it.SKU, Qty: it.Qty - free[it.SKU]})
		}
	}
	if len(missing) > 0 {
		return writeReply(ctx, tx, StockShort, stockReply{OrderID: ev.OrderID, Missing: missing})
	}
	for _, it := range ev.Items {
		if _, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + $2 WHERE sku = $1`, it.SKU, it.Qty); err != nil {
			return fmt.Errorf("reserve %s: %w", it.SKU, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO reservations (order_id, sku, qty) VALUES ($1, $2, $3)`, ev.OrderID, it.SKU, it.Qty); err != nil {
			return fmt.Errorf("record reservation: %w", err)
		}
	}
	return writeReply(ctx, tx, StockReserved, stockReply{OrderID: ev.OrderID})
}

// writeReply writes a reply to inventory's outbox on tx: the same outbox
// library, the same pattern, another database and another relay.
func writeReply(ctx context.Context, tx pgx.Tx, eventType string, reply stockReply) error {
	return writeEvent(ctx, tx, eventType, reply.OrderID, reply)
}

// restock delivers stock every restockEvery until ctx ends. Each product is
// its own statement, so restocking holds one stock row lock at a time and
// cannot deadlock with a reservation.
func (s *inventoryService) restock(ctx context.Context) error {
	skus, err := s.skus(ctx)
	if err != nil {
		return err
	}
	return every(ctx, restockEvery, func() error {
		for _, sku := range skus {
			_, err := s.db.Exec(ctx, `UPDATE stock SET on_hand = on_hand + $2 WHERE sku = $1 AND on_hand - reserved < $3`,
				sku, restockUnits, restockBelow)
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("restock %s: %w", sku, err)
			}
		}
		return nil
	})
}

func (s *inventoryService) skus(ctx context.Context) ([]string, error) {
	rows, _ := s.db.Query(ctx, `SELECT sku FROM stock ORDER BY sku`)
	skus, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read products: %w", err)
	}
	return skus, nil
}
