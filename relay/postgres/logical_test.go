package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// logicalStore sets the logical source up on b's database and returns a
// started store of it holding the lease, and its position.
func logicalStore(t *testing.T, b bundle) (*Store, relay.Position) {
	t.Helper()
	testenv.SkipUnlessLogical(t, b.url)
	cfg := Config{URL: b.url, Table: Table{Name: "outbox"}, Source: SourceLogical, LeaseTimeout: time.Minute}
	if _, err := SetUpLogical(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return openLogical(t, cfg)
}

func openLogical(t *testing.T, cfg Config) (*Store, relay.Position) {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	pos, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s, pos
}

// streamN reads from the logical source until n rows arrived.
func streamN(t *testing.T, s *Store, after relay.Position, n int) []relay.Row {
	t.Helper()
	var all []relay.Row
	for deadline := time.Now().Add(30 * time.Second); len(all) < n; {
		rows, err := s.Read(context.Background(), after, relay.Batch{Rows: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) > 0 {
			all = append(all, rows...)
			after = rows[len(rows)-1].Position()
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("streamed %d rows, want %d", len(all), n)
		}
		select {
		case <-s.Wake():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if len(all) != n {
		t.Fatalf("streamed %d rows, want %d: %v", len(all), n, rowIDs(all))
	}
	return all
}

// quiet checks that the logical source has nothing more after the
// position for a while: the absence of a row, which no state can show.
func quiet(t *testing.T, s *Store, after relay.Position) {
	t.Helper()
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		rows, err := s.Read(context.Background(), after, relay.Batch{Rows: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) > 0 {
			t.Fatalf("rows %v came after %s, want none", rowIDs(rows), after)
		}
	}
}

func payloads(rows []relay.Row) []string {
	var out []string
	for _, r := range rows {
		out = append(out, string(r.Payload))
	}
	return out
}

func TestLogicalReadsInCommitOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, pos := logicalStore(t, b)
	ctx := context.Background()

	// first takes its transaction id first, second commits first.
	first, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx)
	if _, err := first.Exec(ctx, insertSQL, "a", "first"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "a", "second"); err != nil {
		t.Fatal(err)
	}
	// A transaction held open elsewhere in the cluster holds nothing back.
	testenv.OpenTransactionElsewhere(t)
	got := streamN(t, s, pos, 1)
	if string(got[0].Payload) != "second" {
		t.Fatalf("first row %q, want the one committed first, while older transactions are open", got[0].Payload)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got = append(got, streamN(t, s, got[0].Position(), 1)...)
	if p := payloads(got); !slices.Equal(p, []string{"second", "first"}) {
		t.Fatalf("rows %v, want commit order [second first]", p)
	}
	if got[0].TxID <= got[1].TxID || got[0].LSN >= got[1].LSN {
		t.Errorf("txids %d, %d and commit LSNs %d, %d: want the later txid committed first", got[0].TxID, got[1].TxID, got[0].LSN, got[1].LSN)
	}
	// Every field comes through.
	r := got[1]
	if r.AggregateType != "order" || r.AggregateID != "a" || r.EventType != "Tested" || r.RoutingKey != "rk" ||
		r.ContentType != "application/json" || string(r.Headers) != "{}" || r.Exchange != nil || len(r.EventID) != 36 ||
		r.CreatedAt.IsZero() || r.PayloadSize != len("first") {
		t.Errorf("row decoded as %+v", r)
	}
}

func TestLogicalReplaysFromTheRecordedRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, pos := logicalStore(t, b)
	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := tx.Exec(ctx, insertSQL, "a", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "b", "5"); err != nil {
		t.Fatal(err)
	}
	rows := streamN(t, s, pos, 6)
	if p := payloads(rows); !slices.Equal(p, []string{"0", "1", "2", "3", "4", "5"}) {
		t.Fatalf("rows %v", p)
	}
	// Recorded in the middle of the first transaction: a new process
	// replays from the row after it, not from the transaction's start.
	if err := s.Record(ctx, rows[2].Position()); err != nil {
		t.Fatal(err)
	}
	if n, oldest := s.Unrecorded(); n != 3 || !oldest.Equal(rows[3].CreatedAt) {
		t.Errorf("Unrecorded = %d, %s; want the 3 rows after the recorded one, the oldest created %s", n, oldest, rows[3].CreatedAt)
	}
	s.Close()
	s2, pos2 := openLogical(t, Config{URL: b.url, Table: Table{Name: "outbox"}, Source: SourceLogical, LeaseTimeout: time.Minute, Replica: "second"})
	if pos2.LSN != rows[2].LSN || pos2.ID != rows[2].ID {
		t.Fatalf("recorded position %s, want %s", pos2, rows[2].Position())
	}
	again := streamN(t, s2, pos2, 3)
	if p := payloads(again); !slices.Equal(p, []string{"3", "4", "5"}) {
		t.Fatalf("replayed %v, want [3 4 5]", p)
	}
	// A rewind to the recorded position (after a failed round) replays
	// what came after it, within the process too.
	if err := s2.Record(ctx, again[0].Position()); err != nil {
		t.Fatal(err)
	}
	if p := payloads(streamN(t, s2, again[0].Position(), 2)); !slices.Equal(p, []string{"4", "5"}) {
		t.Fatalf("after a rewind, %v, want [4 5]", p)
	}
	// Recorded at the end: nothing more comes.
	if err := s2.Record(ctx, again[2].Position()); err != nil {
		t.Fatal(err)
	}
	quiet(t, s2, again[2].Position())
}

// TestLogicalRecordMovesTheTxidPosition: rows come in commit order, yet
// the (txid, id) position that retention and the poll source rely on
// moves too, never past a row that is not published.
func TestLogicalRecordMovesTheTxidPosition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, pos := logicalStore(t, b)
	ctx := context.Background()
	txidPos := func() relay.Position {
		var p relay.Position
		if err := b.pool.QueryRow(ctx, `SELECT txid, id FROM outbox_relay_position WHERE outbox_table = 'public.outbox'`).Scan(&p.TxID, &p.ID); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// An open transaction's row: until it commits and is recorded, the
	// (txid, id) position stays below it.
	open, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(ctx)
	if _, err := open.Exec(ctx, insertSQL, "open", "open"); err != nil {
		t.Fatal(err)
	}
	var openTxid uint64
	if err := open.QueryRow(ctx, `SELECT pg_current_xact_id()`).Scan(&openTxid); err != nil {
		t.Fatal(err)
	}
	var last relay.Position = pos
	for i := range 4 {
		if _, err := b.pool.Exec(ctx, insertSQL, "a", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		rows := streamN(t, s, last, 1)
		last = rows[0].Position()
		if err := s.Record(ctx, last); err != nil {
			t.Fatal(err)
		}
		if p := txidPos(); p.TxID > openTxid {
			t.Fatalf("(txid, id) position %s passed the open transaction %d", p, openTxid)
		}
	}
	if err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := b.pool.Exec(ctx, insertSQL, "a", fmt.Sprint(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	rows := streamN(t, s, last, 4)
	for _, r := range rows {
		if err := s.Record(ctx, r.Position()); err != nil {
			t.Fatal(err)
		}
	}
	// The outbox is idle now: the stream records where the server's
	// decoding got to, and the position follows.
	for deadline := time.Now().Add(30 * time.Second); txidPos().TxID <= openTxid; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("(txid, id) position %s, want past the transaction %d, published and recorded", txidPos(), openTxid)
		}
	}
}

func TestLogicalSlotAdvancesOnAnIdleOutbox(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, pos := logicalStore(t, b)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, insertSQL, "a", "x"); err != nil {
		t.Fatal(err)
	}
	rows := streamN(t, s, pos, 1)
	if err := s.Record(ctx, rows[0].Position()); err != nil {
		t.Fatal(err)
	}
	// Other tables change; the outbox does not.
	if _, err := b.pool.Exec(ctx, `CREATE TABLE busy (n int)`); err != nil {
		t.Fatal(err)
	}
	var after uint64
	if err := b.pool.QueryRow(ctx, `INSERT INTO busy SELECT generate_series(1, 1000) RETURNING (pg_current_wal_insert_lsn() - '0/0')::bigint`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	slot := DefaultSlot(b.store.connConfig.Database, "public.outbox")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var confirmed uint64
		if _, err := s.Read(ctx, rows[0].Position(), relay.Batch{Rows: 100}); err != nil { // keeps the session
			t.Fatal(err)
		}
		if err := b.pool.QueryRow(ctx, `SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed); err != nil {
			t.Fatal(err)
		}
		if confirmed >= after {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed at %d, still before %d, where the other table's writes ended", confirmed, after)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLogicalStartRefusesWhatItCannotServe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	testenv.SkipUnlessLogical(t, b.url)
	ctx := context.Background()
	cfg := Config{URL: b.url, Table: Table{Name: "outbox"}, Source: SourceLogical}
	start := func() error {
		s, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.Start(ctx)
		return err
	}
	if err := start(); !errors.Is(err, relay.ErrNotSetUp) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Start without a slot = %v, want ErrNotSetUp naming the missing slot", err)
	}
	// A row committed before the slot, not published: the slot lacks it.
	if _, err := b.pool.Exec(ctx, insertSQL, "a", "before"); err != nil {
		t.Fatal(err)
	}
	if _, err := SetUpLogical(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := start(); !errors.Is(err, relay.ErrNotSetUp) || !strings.Contains(err.Error(), "1 rows were committed before slot") {
		t.Fatalf("Start with an unpublished row older than the slot = %v, want ErrNotSetUp", err)
	}
	// Once the poll source has published it, the logical source starts.
	var txid uint64
	var id int64
	if err := b.pool.QueryRow(ctx, `SELECT txid, id FROM outbox`).Scan(&txid, &id); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET txid = $1::xid8, id = $2`, txid, id); err != nil {
		t.Fatal(err)
	}
	if err := start(); err != nil {
		t.Fatalf("Start once the older rows are published = %v", err)
	}
	// The publication is gone.
	if _, err := b.pool.Exec(ctx, `DROP PUBLICATION `+DefaultPublication("public.outbox")); err != nil {
		t.Fatal(err)
	}
	if err := start(); !errors.Is(err, relay.ErrNotSetUp) || !strings.Contains(err.Error(), "publication") {
		t.Fatalf("Start without the publication = %v, want ErrNotSetUp naming it", err)
	}
}

func TestLogicalNames(t *testing.T) {
	for _, tc := range []struct{ db, key, slot, pub string }{
		{"shop", "public.outbox", "outbox_relay_shop_public_outbox", "outbox_relay_public_outbox"},
		{"Shop-EU", "Sales.outbox", "outbox_relay_shop_eu_sales_outbox", "outbox_relay_sales_outbox"},
	} {
		if got := DefaultSlot(tc.db, tc.key); got != tc.slot {
			t.Errorf("DefaultSlot(%q, %q) = %q, want %q", tc.db, tc.key, got, tc.slot)
		}
		if got := DefaultPublication(tc.key); got != tc.pub {
			t.Errorf("DefaultPublication(%q) = %q, want %q", tc.key, got, tc.pub)
		}
	}
	long := strings.Repeat("d", 80)
	a, b := DefaultSlot(long+"1", "public.outbox"), DefaultSlot(long+"2", "public.outbox")
	if len(a) != maxIdentifier || a == b || !validSlot(a) {
		t.Errorf("long names %q and %q: want %d bytes each, distinct and valid", a, b, maxIdentifier)
	}
}

// TestLogicalRetentionDeletesPublishedRows: retention, which deletes
// published rows at or before the (txid, id) position, works for the
// logical source, whose records move that position (a commit behind
// their own, and never past a transaction open anywhere on the server:
// tests running beside this one hold some); rows not recorded stay.
func TestLogicalRetentionDeletesPublishedRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, pos := logicalStore(t, b)
	ctx := context.Background()
	insertAged(t, b, "old", 10, 2*time.Hour)
	last := streamN(t, s, pos, 10)[9].Position()
	deleted := 0
	for deadline := time.Now().Add(90 * time.Second); deleted < 10; {
		// The writers go on (young rows, which retention keeps), and the
		// relay records them.
		insertAged(t, b, "young", 1, 0)
		last = streamN(t, s, last, 1)[0].Position()
		if err := s.Record(ctx, last); err != nil {
			t.Fatal(err)
		}
		n, err := prune(ctx, t, s, RetentionConfig{Retention: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if deleted += n; deleted < 10 && time.Now().After(deadline) {
			t.Fatalf("retention deleted %d of the 10 published rows in 90 s", deleted)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Old rows the relay has received and not recorded stay.
	insertAged(t, b, "pending", 3, 2*time.Hour)
	streamN(t, s, last, 3)
	for range 3 {
		n, err := prune(ctx, t, s, RetentionConfig{Retention: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		deleted += n
	}
	var left int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE aggregate_id = 'pending'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if deleted != 10 || left != 3 {
		t.Fatalf("retention deleted %d rows and left %d of the 3 unrecorded ones, want 10 and 3", deleted, left)
	}
}
