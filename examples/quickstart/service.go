package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// orderEvent is the JSON payload of every event. Seq numbers an order's
// committed events 1, 2, 3, so the consumer can check their order.
type orderEvent struct {
	OrderID    int64  `json:"order_id"`
	Seq        int    `json:"seq"`
	Status     string `json:"status"`
	TotalCents int64  `json:"total_cents"`
}

// eventTypes maps an order's new status to the event that announces it.
var eventTypes = map[string]string{"placed": "OrderPlaced", "paid": "OrderPaid", "shipped": "OrderShipped"}

// Each statement below is the transaction's first write, so it takes the
// order's row lock and the transaction id together: that makes the relay's
// per-aggregate order equal commit order (see the outbox package docs).
const (
	newOrderIDSQL = `SELECT nextval(pg_get_serial_sequence('orders', 'id'))`
	placeOrderSQL = `INSERT INTO orders (id, status, seq, total_cents) OVERRIDING SYSTEM VALUE VALUES ($1, 'placed', 1, $2)`
	advanceSQL    = `
UPDATE orders
SET status = CASE status WHEN 'placed' THEN 'paid' WHEN 'paid' THEN 'shipped' END,
    seq = seq + 1,
    updated_at = now()
WHERE id = $1 AND status IN ('placed', 'paid')
RETURNING status, seq, total_cents`
	recordRollbackSQL = `INSERT INTO demo_rolled_back (event_id) VALUES ($1)`
)

// service is the sample order service: one connection, one transaction at a
// time. It keeps the ids of unshipped orders in memory only to pick the next
// one to advance; the orders table is the truth.
type service struct {
	conn       *pgx.Conn
	exchange   string
	out        io.Writer
	open       []int64 // orders not yet shipped
	committed  int
	rolledBack int
}

// runService writes one transaction every 50 to 100 ms until ctx ends.
func runService(ctx context.Context, cfg config, out io.Writer) error {
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.Background())
	s := &service{conn: conn, exchange: cfg.Exchange, out: out}
	fmt.Fprintln(out, "service : writing an order event every 50-100 ms; about 1 transaction in 10 is rolled back on purpose")
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "service : stopped: committed %d, rolled back %d\n", s.committed, s.rolledBack)
			return nil
		case <-time.After(time.Duration(50+mathrand.IntN(51)) * time.Millisecond):
		}
		// A transaction that has started finishes even if a signal arrives:
		// cancelling a COMMIT would leave its outcome unknown.
		if err := s.step(context.WithoutCancel(ctx)); err != nil {
			return err
		}
	}
}

// step runs one transaction: change an order, write its event, then commit,
// or, about one time in ten, roll back.
func (s *service) step(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Which order changes is decided first, and its ordering lock taken
	// with BEGIN, before the transaction's first write: that is what
	// makes the relay publish each order's events in commit order.
	id, placing, err := s.pickOrder(ctx)
	if err != nil {
		return err
	}
	tx, err := outbox.Begin(ctx, s.conn, outbox.Aggregate{Type: "order", ID: strconv.FormatInt(id, 10)})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) // no-op after Commit

	ev, err := s.changeOrder(ctx, tx, id, placing)
	if err != nil {
		return err
	}
	payload, err := outbox.JSON(ev)
	if err != nil {
		return err
	}
	event := outbox.Event{
		AggregateType: "order",
		AggregateID:   strconv.FormatInt(ev.OrderID, 10),
		EventType:     eventTypes[ev.Status],
		Exchange:      s.exchange,
		RoutingKey:    "orders." + ev.Status,
		Payload:       payload,
	}
	rollback := mathrand.IntN(10) == 0
	if rollback {
		// Normally the database generates event_id; the demo picks it here
		// only to remember which event must never be delivered.
		event.EventID = newEventID()
	}
	if err := outbox.Write(ctx, tx, event); err != nil {
		return fmt.Errorf("write event: %w", err)
	}

	if rollback {
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("rollback: %w", err)
		}
		s.rolledBack++
		if _, err := s.conn.Exec(ctx, recordRollbackSQL, event.EventID); err != nil {
			return fmt.Errorf("record rolled-back event: %w", err)
		}
		fmt.Fprintf(s.out, "service : rolled back %s of order %d (event %s): it must never be delivered\n",
			event.EventType, ev.OrderID, event.EventID[:8])
		return nil
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.committed++
	s.remember(ev)
	return nil
}

// pickOrder chooses the order to change: a new one (its id drawn before
// the transaction, since drawing from a sequence may count as a write) or
// an open one.
func (s *service) pickOrder(ctx context.Context) (id int64, placing bool, err error) {
	if len(s.open) < 3 || mathrand.IntN(3) == 0 {
		if err := s.conn.QueryRow(ctx, newOrderIDSQL).Scan(&id); err != nil {
			return 0, false, fmt.Errorf("draw an order id: %w", err)
		}
		return id, true, nil
	}
	return s.open[mathrand.IntN(len(s.open))], false, nil
}

// changeOrder places order id, or advances it (placed -> paid -> shipped),
// and returns the event describing the change.
func (s *service) changeOrder(ctx context.Context, tx pgx.Tx, id int64, placing bool) (orderEvent, error) {
	if placing {
		ev := orderEvent{OrderID: id, Seq: 1, Status: "placed", TotalCents: 500 + mathrand.Int64N(20000)}
		if _, err := tx.Exec(ctx, placeOrderSQL, id, ev.TotalCents); err != nil {
			return ev, fmt.Errorf("place order: %w", err)
		}
		return ev, nil
	}
	ev := orderEvent{OrderID: id}
	err := tx.QueryRow(ctx, advanceSQL, ev.OrderID).Scan(&ev.Status, &ev.Seq, &ev.TotalCents)
	if errors.Is(err, pgx.ErrNoRows) {
		return ev, fmt.Errorf("advance order %d: not found or already shipped", ev.OrderID)
	}
	if err != nil {
		return ev, fmt.Errorf("advance order %d: %w", ev.OrderID, err)
	}
	return ev, nil
}

// remember updates the set of open orders after a commit.
func (s *service) remember(ev orderEvent) {
	switch ev.Status {
	case "placed":
		s.open = append(s.open, ev.OrderID)
	case "shipped":
		for i, id := range s.open {
			if id == ev.OrderID {
				s.open = append(s.open[:i], s.open[i+1:]...)
				break
			}
		}
	}
}

// newEventID returns a random (version 4) UUID in canonical form.
func newEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
