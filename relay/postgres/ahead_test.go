package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// recordedPosition reads the position row: the safe (txid, id) and
// whether transactions are recorded open beside it.
func recordedPosition(t *testing.T, b bundle) (relay.Position, bool) {
	t.Helper()
	var pos relay.Position
	var open bool
	if err := b.pool.QueryRow(context.Background(),
		`SELECT txid::text::bigint, id, read_open IS NOT NULL FROM outbox_relay_position`).Scan(&pos.TxID, &pos.ID, &open); err != nil {
		t.Fatal(err)
	}
	return pos, open
}

// recordSettled records pos until no transaction is recorded open beside
// the position: until the transactions that ran below it, in any database
// of the server (tests run beside each other), have ended. It returns the
// recorded position.
func recordSettled(t *testing.T, b bundle, s *Store, pos relay.Position) relay.Position {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := s.Record(context.Background(), pos); err != nil {
			t.Fatal(err)
		}
		got, open := recordedPosition(t, b)
		if !open {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorded %v with transactions open beside it for 30 s", got)
		}
	}
}

// TestReadPastAnOpenTransaction is RELIABILITY entry 1 with the read
// that goes past running transactions: rows that commit while an older
// transaction runs are read at once; that transaction's row is read when
// it commits, after them, and never skipped, even when it writes its row
// after the later rows were read; the recorded position stays behind it
// until then, and a new leader reads nothing twice and misses nothing.
func TestReadPastAnOpenTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")
	pos := relay.Position{}

	early, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback(ctx)
	if _, err := early.Exec(ctx, insertSQL, "early", "early"); err != nil {
		t.Fatal(err)
	}
	var earlyTxid uint64
	// Takes a transaction id and writes nothing yet.
	later, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer later.Rollback(ctx)
	if err := later.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(new(int64)); err != nil {
		t.Fatal(err)
	}
	aborts, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer aborts.Rollback(ctx)
	if _, err := aborts.Exec(ctx, insertSQL, "aborted", "aborted"); err != nil {
		t.Fatal(err)
	}
	if err := early.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&earlyTxid); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprint("late", i), "late"); err != nil {
			t.Fatal(err)
		}
	}
	rows := readN(t, a, pos, 3)
	for i, r := range rows {
		if r.AggregateID != fmt.Sprint("late", i) {
			t.Fatalf("row %d read is %q, want late%d", i, r.AggregateID, i)
		}
	}
	pos = rows[2].Position()
	last := relay.Position{TxID: pos.TxID, ID: pos.ID} // the cursor from here on
	if err := a.Record(ctx, pos); err != nil {
		t.Fatal(err)
	}
	if got, open := recordedPosition(t, b); got.TxID > earlyTxid || !open {
		t.Fatalf("recorded %v (open recorded: %v) while transaction %d runs; want at most its id, with the open ones recorded", got, open, earlyTxid)
	}
	if st, err := a.Admin().Status(ctx); err != nil || st.Pending != 0 || st.OpenTransactions < 3 || st.ReadCursor != last.String() {
		t.Fatalf("Status = %+v, %v; want nothing pending (the published rows are not pending), read up to %v past at least 3 open transactions", st, err, last)
	}

	// A new leader goes on from what was recorded.
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	c := replicaStore(t, b, "c")
	pos, err = c.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, pos); len(got) != 0 {
		t.Fatalf("the new leader read %d rows again", len(got))
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := later.Exec(ctx, insertSQL, "later", "later"); err != nil {
		t.Fatal(err)
	}
	if err := later.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := aborts.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	rows = readN(t, c, pos, 2)
	if rows[0].AggregateID != "early" || rows[1].AggregateID != "later" {
		t.Fatalf("read %q, %q after the commits; want early, later", rows[0].AggregateID, rows[1].AggregateID)
	}
	pos = rows[1].Position()
	if err := c.Record(ctx, pos); err != nil {
		t.Fatal(err)
	}
	// Nothing runs below the cursor any more (a transaction of a test
	// beside this one may, for a moment): the position reaches it.
	if got := recordSettled(t, b, c, pos); got != last {
		t.Fatalf("recorded %v, want the last row after the cursor, %v", got, last)
	}
	if got := readAll(t, c, pos); len(got) != 0 {
		t.Fatalf("read %d rows again after the last", len(got))
	}
}

// TestReadAheadAcrossLeaders: 16 writers with random commit delays and
// rollbacks; the reader records as it goes, and every so often hands the
// lease to another store, which goes on from the recorded position. Every
// committed row is read exactly once, across the leaders.
func TestReadAheadAcrossLeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	committed, done := writeAtRandom(t, b, 16, 30, true)

	names := []string{"a", "b"}
	stores := []*Store{replicaStore(t, b, "a"), replicaStore(t, b, "b")}
	cur := 0
	pos, err := stores[cur].Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for reads, finished := 0, false; ; reads++ {
		select {
		case <-done:
			finished = true
		default:
		}
		rows, err := stores[cur].Read(ctx, pos, relay.Batch{Rows: 1 + rand.N(20)})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if seen[r.AggregateID]++; seen[r.AggregateID] > 1 {
				t.Errorf("row %s (%v) read again, by %s", r.AggregateID, r.Position(), names[cur])
			}
		}
		if len(rows) > 0 {
			pos = rows[len(rows)-1].Position()
			if err := stores[cur].Record(ctx, pos); err != nil {
				t.Fatal(err)
			}
		} else if finished && len(seen) >= count(committed) {
			break
		}
		if reads%25 == 24 {
			if err := stores[cur].Release(ctx); err != nil {
				t.Fatal(err)
			}
			cur = 1 - cur
			if pos, err = stores[cur].Acquire(ctx); err != nil {
				t.Fatalf("%s: Acquire = %v", names[cur], err)
			}
		}
		if t.Failed() {
			return
		}
	}
	readOnce(t, committed, seen)
}

// TestReadStateNotes: a reading state survives its note and the position
// table's columns; a recorded state that no longer leads to the position
// (changed by hand) is ignored, so reading goes on from the position.
func TestReadStateNotes(t *testing.T) {
	st := readState{cursor: relay.Position{TxID: 900, ID: 42}, open: []openXact{{700, 0}, {800, 17}}}
	at := relay.Position{TxID: 900, ID: 42}
	got, err := stateOf(relay.Position{TxID: 1, ID: 1, Ahead: st.note(at)})
	if err != nil || fmt.Sprint(got) != fmt.Sprint(st) {
		t.Fatalf("stateOf(note) = %v, %v; want %v", got, err, st)
	}
	if safe := st.safe(); safe != (relay.Position{TxID: 700, ID: 0}) {
		t.Fatalf("safe = %v, want 700/0", safe)
	}
	if n := (readState{cursor: at}).note(at); n != "" {
		t.Fatalf("a state that is its position alone has note %q", n)
	}
	txid, id := "900", int64(42)
	open, ids := st.openColumns()
	if back := recordedState(st.safe(), &txid, &id, open, ids); fmt.Sprint(back) != fmt.Sprint(st) {
		t.Fatalf("recordedState = %v, want %v", back, st)
	}
	moved := relay.Position{TxID: 650, ID: 3}
	if back := recordedState(moved, &txid, &id, open, ids); fmt.Sprint(back) != fmt.Sprint(readState{cursor: moved}) {
		t.Fatalf("recordedState after a change by hand = %v, want the position alone", back)
	}
	for _, bad := range []string{"x", "900/42 950:0", "900/42 800:0 700:0", "900/42 700"} {
		if _, err := stateOf(relay.Position{Ahead: bad}); err == nil {
			t.Errorf("stateOf(%q) accepted", bad)
		}
	}
	// A row of neither part is refused, never skipped over.
	for _, r := range []relay.Row{{TxID: 750, ID: 1}, {TxID: 800, ID: 17}, {TxID: 900, ID: 42}} {
		s := st
		s.open = append([]openXact(nil), st.open...)
		if err := s.readRow(&r, nil); err == nil {
			t.Errorf("readRow(%d/%d) accepted", r.TxID, r.ID)
		}
	}
}

// TestIdleRelaySettles: an idle relay's recorded position moves past the
// transactions it read past once they end, with no new row to record:
// after a record that already dropped one of them, and after a new leader
// took over the recorded state.
func TestIdleRelaySettles(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")
	xacts, xids := map[string]pgx.Tx{}, map[string]string{}
	for _, name := range []string{"x", "y", "z"} {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		var xid string
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		xacts[name], xids[name] = tx, xid
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "r", "r"); err != nil {
		t.Fatal(err)
	}
	row := readN(t, a, relay.Position{}, 1)[0]
	recordedOpen := func(name string) bool {
		t.Helper()
		var in bool
		if err := b.pool.QueryRow(ctx, `SELECT coalesce($1::text::xid8 = ANY(read_open), false) FROM outbox_relay_position`,
			xids[name]).Scan(&in); err != nil {
			t.Fatal(err)
		}
		return in
	}
	// idle reads until cond holds, as an idle relay does.
	idle := func(s *Store, what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if rows, err := s.Read(ctx, row.Position(), relay.Batch{Rows: 10}); err != nil || len(rows) != 0 {
				t.Fatalf("idle read = %d rows, %v", len(rows), err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("idle for 30 s, yet not %s", what)
			}
		}
	}
	if err := xacts["x"].Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(ctx, row.Position()); err != nil { // drops x
		t.Fatal(err)
	}
	if recordedOpen("x") || !recordedOpen("y") || !recordedOpen("z") {
		t.Fatalf("recorded open: x %v, y %v, z %v; want y and z only", recordedOpen("x"), recordedOpen("y"), recordedOpen("z"))
	}
	if err := xacts["y"].Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	idle(a, "past y", func() bool { return !recordedOpen("y") })
	if !recordedOpen("z") {
		t.Fatal("z, still running, was dropped")
	}

	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	c := replicaStore(t, b, "c")
	if _, err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := xacts["z"].Commit(ctx); err != nil {
		t.Fatal(err)
	}
	want := relay.Position{TxID: row.TxID, ID: row.ID}
	idle(c, "at the row with nothing open", func() bool {
		got, open := recordedPosition(t, b)
		return !open && got == want
	})
}

// TestReadAheadNeedsTheColumns: a position table made before the
// read-ahead columns stops the poll source with the command that adds
// them.
func TestReadAheadNeedsTheColumns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `ALTER TABLE outbox_relay_position
  DROP COLUMN read_txid, DROP COLUMN read_id, DROP COLUMN read_open, DROP COLUMN read_open_ids`); err != nil {
		t.Fatal(err)
	}
	_, err := b.store.Start(context.Background())
	if !errors.Is(err, relay.ErrNotSetUp) || !strings.Contains(err.Error(), "run outbox-relay migrate") {
		t.Fatalf("Start = %v, want ErrNotSetUp naming outbox-relay migrate", err)
	}
}
