package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Check compares the three views of every order: the orders tables (state
// written by commands), inventory's read model (built from events by a
// consumer) and the fold of the events the audit received (event
// sourcing). It also checks the saga's outcome and inventory's books, and
// that every committed event reached every consumer that should get it.
// Run it when nothing is under way (after settle).
func (s *shop) Check(ctx context.Context) (summary, error) {
	sum := summary{
		Commands:            s.customers.committed.Load(),
		RolledBack:          s.customers.rolledBack.Load(),
		InventoryProcessed:  s.inventoryInbox.processed.Load(),
		InventoryDuplicates: s.inventoryInbox.duplicates.Load(),
		OrdersProcessed:     s.ordersInbox.processed.Load(),
		OrdersDuplicates:    s.ordersInbox.duplicates.Load(),
	}

	// What the orders service committed.
	orders, err := readStates(ctx, s.ordersDB, `
SELECT o.id, o.status, o.version, o.reason, coalesce(jsonb_object_agg(i.sku, i.qty) FILTER (WHERE i.sku IS NOT NULL), '{}')
FROM orders o LEFT JOIN order_items i ON i.order_id = o.id GROUP BY o.id`)
	if err != nil {
		return sum, fmt.Errorf("read orders: %w", err)
	}
	// What inventory made of the events.
	view, err := readStates(ctx, s.inventoryDB, `
SELECT v.order_id, v.status, v.version, '', coalesce(jsonb_object_agg(i.sku, i.qty) FILTER (WHERE i.sku IS NOT NULL), '{}')
FROM order_view v LEFT JOIN order_view_items i ON i.order_id = v.order_id GROUP BY v.order_id`)
	if err != nil {
		return sum, fmt.Errorf("read inventory's view: %w", err)
	}
	// What the events alone say.
	received, logged, auditDuplicates, malformed := s.audit.snapshot()
	sum.AuditDuplicates = auditDuplicates
	for _, id := range malformed {
		sum.Unexpected = append(sum.Unexpected, "message "+id+": not an order event")
	}
	folded := map[int64]orderState{}
	for _, id := range slices.Sorted(maps.Keys(logged)) {
		st, err := fold(logged[id])
		if err != nil {
			sum.OutOfOrder = append(sum.OutOfOrder, fmt.Sprintf("order %d: %v", id, err))
		}
		folded[id] = st
	}

	sum.countOrders(orders)
	for _, id := range sortedIDs(ids(orders), ids(view), ids(folded)) {
		o, v, f := orders[id].orderState, view[id].orderState, folded[id]
		if !o.equal(v) || !o.equal(f) {
			sum.Disagreements = append(sum.Disagreements,
				fmt.Sprintf("order %d: orders table %s; inventory's view %s; events %s", id, o, v, f))
		}
	}

	if err := s.checkDelivery(ctx, &sum, received); err != nil {
		return sum, err
	}
	if err := s.checkStock(ctx, &sum, orders); err != nil {
		return sum, err
	}
	ch, err := s.auditConn.Channel()
	if err != nil {
		return sum, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if sum.DeadLettered, err = s.topo.deadLettered(ch); err != nil {
		return sum, err
	}
	return sum, nil
}

// checkDelivery compares the events committed to each outbox with what
// each of their consumers processed or received.
func (s *shop) checkDelivery(ctx context.Context, sum *summary, audited map[string]int) error {
	orderEvents, err := readIDs(ctx, s.ordersDB, `SELECT event_id::text FROM outbox`)
	if err != nil {
		return fmt.Errorf("read the orders outbox: %w", err)
	}
	replies, err := readIDs(ctx, s.inventoryDB, `SELECT event_id::text FROM outbox`)
	if err != nil {
		return fmt.Errorf("read the inventory outbox: %w", err)
	}
	byInventory, err := readIDs(ctx, s.inventoryDB, `SELECT message_id::text FROM inbox WHERE consumer = $1`, inventoryConsumer)
	if err != nil {
		return fmt.Errorf("read inventory's inbox: %w", err)
	}
	byOrders, err := readIDs(ctx, s.ordersDB, `SELECT message_id::text FROM inbox WHERE consumer = $1`, ordersConsumer)
	if err != nil {
		return fmt.Errorf("read orders' inbox: %w", err)
	}
	sum.OrderEvents, sum.Replies = len(orderEvents), len(replies)

	compare := func(committed map[string]bool, consumer string, got map[string]bool) {
		for _, id := range slices.Sorted(maps.Keys(committed)) {
			if !got[id] {
				sum.Lost = append(sum.Lost, fmt.Sprintf("event %s: never reached %s", id, consumer))
			}
		}
		for _, id := range slices.Sorted(maps.Keys(got)) {
			if !committed[id] {
				sum.Unexpected = append(sum.Unexpected, fmt.Sprintf("message %s: reached %s, committed by no outbox", id, consumer))
			}
		}
	}
	audit := map[string]bool{}
	for id := range audited {
		audit[id] = true
	}
	compare(orderEvents, "the audit", audit)
	compare(orderEvents, "inventory", byInventory)
	compare(replies, "orders", byOrders)
	return nil
}

// checkStock checks the saga's outcome against inventory's books: every
// placed order got exactly one reply and none waits for one; a confirmed
// order's items are reserved, nothing else is; and each product's reserved
// count is the sum of its reservations.
func (s *shop) checkStock(ctx context.Context, sum *summary, orders map[int64]ordersRow) error {
	if sum.Placed > 0 {
		sum.Saga = append(sum.Saga, fmt.Sprintf("%d orders still wait for inventory's reply", sum.Placed))
	}
	if answered := sum.Confirmed + sum.CancelledShort; sum.Replies != answered {
		sum.Saga = append(sum.Saga, fmt.Sprintf("%d replies for %d confirmed or short orders: want one each", sum.Replies, answered))
	}

	rows, _ := s.inventoryDB.Query(ctx, `SELECT order_id, sku, qty FROM reservations`)
	reserved := map[int64]map[string]int{}
	perSKU := map[string]int{}
	var id int64
	var sku string
	var qty int
	_, err := pgx.ForEachRow(rows, []any{&id, &sku, &qty}, func() error {
		if reserved[id] == nil {
			reserved[id] = map[string]int{}
		}
		reserved[id][sku] = qty
		perSKU[sku] += qty
		return nil
	})
	if err != nil {
		return fmt.Errorf("read reservations: %w", err)
	}
	for _, id := range sortedIDs(ids(orders), ids(reserved)) {
		o := orders[id]
		if o.Status == statusConfirmed && !maps.Equal(reserved[id], o.Items) {
			sum.Saga = append(sum.Saga, fmt.Sprintf("order %d: confirmed with items %v, reserved %v", id, o.Items, reserved[id]))
		}
		if o.Status != statusConfirmed && len(reserved[id]) > 0 {
			sum.Saga = append(sum.Saga, fmt.Sprintf("order %d: %s but holds reservations %v", id, o.Status, reserved[id]))
		}
	}

	rows, _ = s.inventoryDB.Query(ctx, `SELECT sku, reserved FROM stock ORDER BY sku`)
	var n int
	_, err = pgx.ForEachRow(rows, []any{&sku, &n}, func() error {
		sum.ReservedUnits += n
		sum.ReservationUnits += perSKU[sku]
		if n != perSKU[sku] {
			sum.Saga = append(sum.Saga, fmt.Sprintf("%s: stock says %d reserved, reservations add up to %d", sku, n, perSKU[sku]))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read stock: %w", err)
	}
	return nil
}

// ordersRow is an order's state, with the reason of a cancellation.
type ordersRow struct {
	orderState
	Reason string
}

func readStates(ctx context.Context, db *pgxpool.Pool, sql string) (map[int64]ordersRow, error) {
	rows, _ := db.Query(ctx, sql)
	states := map[int64]ordersRow{}
	var id int64
	var r ordersRow
	_, err := pgx.ForEachRow(rows, []any{&id, &r.Status, &r.Version, &r.Reason, &r.Items}, func() error {
		states[id] = r
		r.Items = nil // a fresh map for the next row
		return nil
	})
	return states, err
}

func readIDs(ctx context.Context, db *pgxpool.Pool, sql string, args ...any) (map[string]bool, error) {
	rows, _ := db.Query(ctx, sql, args...)
	ids := map[string]bool{}
	var id string
	_, err := pgx.ForEachRow(rows, []any{&id}, func() error { ids[id] = true; return nil })
	return ids, err
}

// sortedIDs returns the order ids that are keys of any of the maps.
func sortedIDs(sets ...map[int64]bool) []int64 {
	all := map[int64]bool{}
	for _, m := range sets {
		maps.Copy(all, m)
	}
	return slices.Sorted(maps.Keys(all))
}

// ids returns the keys of m as a set.
func ids[V any](m map[int64]V) map[int64]bool {
	set := make(map[int64]bool, len(m))
	for id := range m {
		set[id] = true
	}
	return set
}

// countOrders fills the order counts from the orders table.
func (sum *summary) countOrders(orders map[int64]ordersRow) {
	sum.Orders = len(orders)
	for _, o := range orders {
		switch o.Status {
		case statusOpen:
			sum.Open++
		case statusPlaced:
			sum.Placed++
		case statusConfirmed:
			sum.Confirmed++
		case statusCancelled:
			if strings.HasPrefix(o.Reason, "out of stock") {
				sum.CancelledShort++
			} else {
				sum.CancelledCustomer++
			}
		}
	}
}
