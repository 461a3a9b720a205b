package postgres

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
)

// afterRestoreSQL returns the SQL block of docs/operations.md that renumbers
// the outbox after a logical copy, so the test runs what users read.
func afterRestoreSQL(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- after-restore:")
	if ok {
		_, rest, ok = strings.Cut(rest, "```sql\n")
	}
	block, _, found := strings.Cut(rest, "```")
	if !ok || !found {
		t.Fatal(`docs/operations.md has no "after-restore" SQL block`)
	}
	return block
}

// TestAfterRestoreProcedure copies an outbox "from another server" (rows
// whose txids lie far beyond this server's counter, the position among
// them, one of them parked), lets the service write on (rows with this
// server's small txids), and checks that after the documented procedure
// the relay starts, reads exactly the rows it never published, in order,
// and still finds the parked row.
func TestAfterRestoreProcedure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := b.pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Copied rows: ids 1-3 were published (2 is parked), 4-5 are pending.
	const far = `(pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000 + $2)::text::xid8`
	for i, agg := range []string{"a", "b", "a", "b", "a"} {
		exec(`INSERT INTO outbox (id, txid, aggregate_type, aggregate_id, event_type, routing_key, payload) OVERRIDING SYSTEM VALUE
VALUES ($1, `+far+`, 'order', $3, 'Copied', 'rk', '\x7b7d')`, i+1, i, agg)
	}
	exec(`UPDATE outbox_relay_position SET txid = o.txid, id = o.id FROM outbox o
 WHERE o.id = 3 AND outbox_table = 'public.outbox'`)
	exec(`INSERT INTO outbox_relay_parked (outbox_table, id, txid, aggregate_type, aggregate_id, attempts, dead)
SELECT 'public.outbox', id, txid, aggregate_type, aggregate_id, 1, false FROM outbox WHERE id = 2`)
	exec(`SELECT setval(pg_get_serial_sequence('outbox', 'id'), 5)`)
	// Written on this server while the relay refused to start.
	for _, agg := range []string{"b", "a"} {
		exec(insertSQL, agg, "{}")
	}
	if _, err := b.store.Start(ctx); !errors.Is(err, relay.ErrPositionAhead) {
		t.Fatalf("Start on the copy = %v, want ErrPositionAhead", err)
	}

	exec(afterRestoreSQL(t))

	pos, err := b.store.Start(ctx)
	if err != nil {
		t.Fatalf("Start after the procedure: %v", err)
	}
	var got []int64
	for _, r := range readN(t, b.store, pos, 4) { // readable once transactions of parallel tests end
		got = append(got, r.ID)
	}
	if want := []int64{4, 5, 6, 7}; !slices.Equal(got, want) {
		t.Errorf("after the procedure the relay reads rows %v, want the ones never published, %v, in order", got, want)
	}
	if _, err := b.store.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	heads, err := b.store.DueHeads(ctx, relay.Batch{Rows: 10}, relay.DeadRowsHold)
	if err != nil {
		t.Fatal(err)
	}
	if len(heads) != 1 || heads[0].Row.ID != 2 {
		t.Errorf("parked rows due after the procedure: %v, want row 2", heads)
	}
}
