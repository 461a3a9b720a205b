package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// ordersService owns the orders database: the tables orders and
// order_items, an outbox and an inbox. Each command is ONE transaction that
// changes the tables and writes the events announcing the change, so the
// events are published if and only if the change commits. The orders relay
// (an outbox-relay with this database as RELAY_DATABASE_URL) publishes them.
type ordersService struct {
	db *pgxpool.Pool
}

// errRule is matched by the error of a command that a business rule
// refused. Its transaction was rolled back: its events with it.
var errRule = errors.New("refused by a business rule")

// Business rules: how many units an order may hold, and must hold to be
// placed.
const (
	maxUnits = 8
	minUnits = 2
)

// advanceOrderSQL moves an order from one status to another and counts one
// more event. Every command takes the order's ordering lock before it
// (inOrder), so the relay publishes each order's events in commit order
// (see "Ordering" in docs/design.md).
const advanceOrderSQL = `
UPDATE orders SET status = $3, reason = $4, version = version + 1, updated_at = now()
WHERE id = $1 AND status = $2
RETURNING version`

// orderAggregate is an order's ordering key.
func orderAggregate(id int64) outbox.Aggregate {
	return outbox.Aggregate{Type: "order", ID: strconv.FormatInt(id, 10)}
}

// inOrder runs fn in one transaction that first takes order id's ordering
// lock, and commits if fn succeeds.
func (s *ordersService) inOrder(ctx context.Context, id int64, fn func(tx pgx.Tx) error) error {
	tx, err := outbox.Begin(ctx, s.db, orderAggregate(id))
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // a no-op after Commit
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// CreateOrder opens an empty order. Its id is drawn before the transaction
// begins: the lock must come before the transaction's first write, and
// drawing from a sequence may be one.
func (s *ordersService) CreateOrder(ctx context.Context) (id int64, err error) {
	if err := s.db.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('orders', 'id'))`).Scan(&id); err != nil {
		return 0, fmt.Errorf("draw an order id: %w", err)
	}
	return id, s.inOrder(ctx, id, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, status, version) OVERRIDING SYSTEM VALUE VALUES ($1, 'open', 1)`, id); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		return writeOrderEvent(ctx, tx, OrderCreated, orderEvent{OrderID: id, Version: 1})
	})
}

// AddItem adds qty units of sku to an open order.
func (s *ordersService) AddItem(ctx context.Context, id int64, sku string, qty int) error {
	return s.inOrder(ctx, id, func(tx pgx.Tx) error {
		version, err := advance(ctx, tx, id, statusOpen, statusOpen, "")
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO order_items (order_id, sku, qty) VALUES ($1, $2, $3)
ON CONFLICT (order_id, sku) DO UPDATE SET qty = order_items.qty + excluded.qty`, id, sku, qty); err != nil {
			return fmt.Errorf("add item: %w", err)
		}
		ev := orderEvent{OrderID: id, Version: version, SKU: sku, Qty: qty}
		if err := writeOrderEvent(ctx, tx, ItemAdded, ev); err != nil {
			return err
		}
		// The rule is checked last, after the event is written, as real
		// checks often come late: the rollback must take the event along.
		if units, err := unitsOf(ctx, tx, id); err != nil {
			return err
		} else if units > maxUnits {
			return fmt.Errorf("%w: order %d would hold %d units, at most %d", errRule, id, units, maxUnits)
		}
		return nil
	})
}

// Place asks for the order to be confirmed: it writes OrderPlaced with the
// items, which inventory answers with StockReserved or StockShort.
func (s *ordersService) Place(ctx context.Context, id int64) error {
	return s.inOrder(ctx, id, func(tx pgx.Tx) error {
		version, err := advance(ctx, tx, id, statusOpen, statusPlaced, "")
		if err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, `SELECT sku, qty FROM order_items WHERE order_id = $1 ORDER BY sku`, id)
		items, err := pgx.CollectRows(rows, pgx.RowToStructByPos[item])
		if err != nil {
			return fmt.Errorf("read items: %w", err)
		}
		if err := writeOrderEvent(ctx, tx, OrderPlaced, orderEvent{OrderID: id, Version: version, Items: items}); err != nil {
			return err
		}
		units := 0
		for _, it := range items {
			units += it.Qty
		}
		if units < minUnits {
			return fmt.Errorf("%w: order %d holds %d units, at least %d to place it", errRule, id, units, minUnits)
		}
		return nil
	})
}

// Cancel cancels an open order at the customer's request.
func (s *ordersService) Cancel(ctx context.Context, id int64) error {
	return s.inOrder(ctx, id, func(tx pgx.Tx) error {
		const reason = "customer"
		version, err := advance(ctx, tx, id, statusOpen, statusCancelled, reason)
		if err != nil {
			return err
		}
		return writeOrderEvent(ctx, tx, OrderCancelled, orderEvent{OrderID: id, Version: version, Reason: reason})
	})
}

// HandleStockReply is the handler of the orders service's inbox: the second
// half of the saga. It confirms a placed order whose stock inventory
// reserved, or cancels it, the compensation, when stock was short. The
// inbox runs it once per reply, on the transaction that records the reply
// as processed, so the new event is written exactly once too.
//
// Its consumer takes the order's ordering lock before the inbox's own
// first write (inbox.Config.Locks, in newConsumer), so a command on the
// same order cannot get its events out of order with this one's.
func (s *ordersService) HandleStockReply(ctx context.Context, tx pgx.Tx, replyType string, reply stockReply) error {
	switch replyType {
	case StockReserved:
		version, err := advance(ctx, tx, reply.OrderID, statusPlaced, statusConfirmed, "")
		if err != nil {
			return err
		}
		return writeOrderEvent(ctx, tx, OrderConfirmed, orderEvent{OrderID: reply.OrderID, Version: version})
	case StockShort:
		var short []string
		for _, m := range reply.Missing {
			short = append(short, fmt.Sprintf("%d %s", m.Qty, m.SKU))
		}
		reason := "out of stock: " + strings.Join(short, ", ")
		version, err := advance(ctx, tx, reply.OrderID, statusPlaced, statusCancelled, reason)
		if err != nil {
			return err
		}
		return writeOrderEvent(ctx, tx, OrderCancelled, orderEvent{OrderID: reply.OrderID, Version: version, Reason: reason})
	default:
		return nil // a reply this version does not know: nothing to do
	}
}

// advance runs advanceOrderSQL and returns the order's new version, which
// is the version of the event the caller writes next.
func advance(ctx context.Context, tx pgx.Tx, id int64, from, to, reason string) (int, error) {
	var version int
	err := tx.QueryRow(ctx, advanceOrderSQL, id, from, to, reason).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("order %d is not %s", id, from)
	}
	if err != nil {
		return 0, fmt.Errorf("update order %d: %w", id, err)
	}
	return version, nil
}

func unitsOf(ctx context.Context, tx pgx.Tx, id int64) (int, error) {
	var units int
	err := tx.QueryRow(ctx, `SELECT coalesce(sum(qty), 0) FROM order_items WHERE order_id = $1`, id).Scan(&units)
	if err != nil {
		return 0, fmt.Errorf("count units of order %d: %w", id, err)
	}
	return units, nil
}

// writeOrderEvent writes an order event to the outbox on tx.
func writeOrderEvent(ctx context.Context, tx pgx.Tx, eventType string, ev orderEvent) error {
	return writeEvent(ctx, tx, eventType, ev.OrderID, ev)
}
