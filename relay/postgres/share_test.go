package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// sharer opens and starts a store of b's table in parts partitions, named
// name.
func sharer(t *testing.T, b bundle, name string, parts int) *Store {
	t.Helper()
	s, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Replica: name, LeaseTimeout: time.Minute, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Start(context.Background()); err != nil {
		t.Fatalf("%s: Start = %v", name, err)
	}
	return s
}

// TestPartitionIsTheSQLFunction checks that relay.Aggregate.Partition, which
// the relay uses, is schema.sql's outbox_partition, which teams compute in
// SQL, for keys of both signs and several partition counts.
func TestPartitionIsTheSQLFunction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	negative := 0
	for i := range 400 {
		a := relay.Aggregate{Type: "order", ID: fmt.Sprintf("%d-ü-%d", i, i*7919)}
		if a.Key() < 0 {
			negative++
		}
		for _, n := range []int{1, 2, 3, 12, 16, 1024} {
			var got int
			if err := b.pool.QueryRow(context.Background(), `SELECT outbox_partition($1, $2, $3)`, a.Type, a.ID, n).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if want := a.Partition(n); got != want || got < 0 || got >= n {
				t.Fatalf("%v in %d partitions: SQL %d, Go %d", a, n, got, want)
			}
		}
	}
	if negative == 0 || negative == 400 {
		t.Fatalf("%d of 400 keys negative: the test covers one sign only", negative)
	}
}

// TestPartitionsShareAndFence: two replicas of a table in 4 partitions
// each take two; the read of each returns the rows of its partitions only,
// from each partition's own position; a replica whose partition was taken
// over is fenced off; a table partitioned one way refuses replicas
// configured another (exit 2, ErrNotSetUp), until SetPartitions changes it,
// which it refuses while a lease is held.
func TestPartitionsShareAndFence(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const parts = 4
	a := sharer(t, b, "a", parts)
	// a is alone: it takes all four.
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire = %v", err)
	}
	if held, _ := a.Share(); len(held) != parts {
		t.Fatalf("a alone holds %v, want all %d", held, parts)
	}
	// c joins: a's next renewal asks for a hand-over; once a released,
	// each takes two.
	c := sharer(t, b, "c", parts)
	if _, err := c.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("c: Acquire while a holds everything = %v, want ErrLeaseHeld", err)
	}
	if err := a.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrHandOver) {
		t.Fatalf("a: Renew after c joined = %v, want ErrHandOver", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire its share = %v", err)
	}
	if _, err := c.Acquire(ctx); err != nil {
		t.Fatalf("c: Acquire its share = %v", err)
	}
	heldA, _ := a.Share()
	heldC, _ := c.Share()
	if len(heldA) != 2 || len(heldC) != 2 || slices.ContainsFunc(heldA, func(k int) bool { return slices.Contains(heldC, k) }) {
		t.Fatalf("a holds %v, c holds %v: want two each, apart", heldA, heldC)
	}
	if err := a.Renew(ctx, "publishing"); err != nil {
		t.Fatalf("a: Renew with its share = %v, want nil", err)
	}

	// Rows of 40 aggregates; c's first partition was published up to its
	// 5th row already.
	for i := range 40 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprintf("agg-%d", i), "{}"); err != nil {
			t.Fatal(err)
		}
	}
	all := readN(t, b.store, relay.Position{}, 40)
	floorPart := heldC[0]
	var floor relay.Position
	n := 0
	for _, r := range all {
		if r.Aggregate().Partition(parts) == floorPart {
			if n++; n == 5 {
				floor = r.Position()
			}
		}
	}
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET txid = $2::xid8, id = $3 WHERE outbox_table = $1`,
		partitionKey("public.outbox", floorPart), fmt.Sprint(floor.TxID), floor.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, c} {
		held, _ := s.Share()
		var want []int64
		for _, r := range all {
			k := r.Aggregate().Partition(parts)
			if slices.Contains(held, k) && (k != floorPart || r.Position().After(floor)) {
				want = append(want, r.ID)
			}
		}
		// A shared table is read below the xmin: a test beside this one
		// may hold the rows back for a moment.
		got := readN(t, s, relay.Position{}, len(want))
		if !slices.Equal(rowIDs(got), want) || len(want) == 0 {
			t.Fatalf("%s (partitions %v) read %v, want %v", s.replica, held, rowIDs(got), want)
		}
	}

	// c stops renewing; a takes over c's partitions once they lapse. c is
	// fenced off.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET lease_until = now() - interval '1 second' WHERE holder = 'c'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `DELETE FROM outbox_relay_replica WHERE replica = 'c'`); err != nil {
		t.Fatal(err)
	}
	if err := a.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrHandOver) {
		t.Fatalf("a: Renew with c's partitions lapsed = %v, want ErrHandOver", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if held, _ := a.Share(); len(held) != parts {
		t.Fatalf("a holds %v after c lapsed, want all %d", held, parts)
	}
	if err := c.Record(ctx, relay.Position{TxID: floor.TxID, ID: floor.ID + 1000}); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("c: Record after losing its partitions = %v, want ErrLeaseLost", err)
	}
	if err := c.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("c: Renew after losing its partitions = %v, want ErrLeaseLost", err)
	}
	// a records: every partition moves, the one ahead stays ahead; the
	// table's own row keeps the prefix all have published.
	mid := all[len(all)/2].Position()
	if err := a.Record(ctx, mid); err != nil {
		t.Fatalf("a: Record = %v", err)
	}
	if err := a.Renew(ctx, "publishing"); err != nil {
		t.Fatal(err)
	}
	st, err := b.store.Admin().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PartitionCount != parts || len(st.Partitions) != parts || st.Position != mid.String() {
		t.Fatalf("status: %d partitions (%d listed), position %s; want %d, and the prefix %s", st.PartitionCount, len(st.Partitions), st.Position, parts, mid)
	}
	for _, p := range st.Partitions {
		want := mid
		if p.Partition == floorPart && floor.After(mid) {
			want = floor
		}
		if p.Holder != "a" || p.Position != want.String() {
			t.Fatalf("partition %d: holder %q at %s, want a at %s", p.Partition, p.Holder, p.Position, want)
		}
	}

	// Another count is refused while the table is partitioned 4 ways...
	for _, n := range []int{1, 8} {
		s, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Replica: fmt.Sprint("p", n), Partitions: n})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Start(ctx)
		s.Close()
		if !errors.Is(err, relay.ErrNotSetUp) {
			t.Fatalf("Start with %d partitions on a table in %d = %v, want ErrNotSetUp", n, parts, err)
		}
	}
	// ...and SetPartitions refuses while a holds leases, then moves every
	// partition to the prefix.
	cfg := Config{URL: b.url, Table: Table{Name: "outbox"}, Partitions: 8}
	if _, err := SetPartitions(ctx, cfg); !errors.Is(err, relay.ErrNotSetUp) {
		t.Fatalf("SetPartitions while a publishes = %v, want ErrNotSetUp", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	change, err := SetPartitions(ctx, cfg)
	if err != nil || change.From != parts || change.To != 8 || change.Start != (relay.Position{TxID: mid.TxID, ID: mid.ID}) {
		t.Fatalf("SetPartitions = %+v, %v; want from 4 to 8 at %s", change, err, mid)
	}
	e := sharer(t, b, "e", 8)
	pos, err := e.Acquire(ctx)
	if err != nil || pos != change.Start {
		t.Fatalf("e: Acquire in 8 partitions = %v, %v; want the prefix %s", pos, err, change.Start)
	}
	// a still runs (its row among the running replicas is fresh): e takes
	// its share, four of the eight, and reads their rows after the prefix.
	held, _ := e.Share()
	var want []int64
	for _, r := range all {
		if r.Position().After(pos) && slices.Contains(held, r.Aggregate().Partition(8)) {
			want = append(want, r.ID)
		}
	}
	if len(held) != 4 || len(want) == 0 {
		t.Fatalf("e holds %v, with %d rows after the prefix; want 4 partitions and some rows", held, len(want))
	}
	if got := readN(t, e, pos, len(want)); !slices.Equal(rowIDs(got), want) {
		t.Fatalf("e holds %v and reads %v after the prefix, want 4 partitions and %v", held, rowIDs(got), want)
	}
}

// TestPartitionsRefuseTheLogicalSource: a replication slot has one reader.
func TestPartitionsRefuseTheLogicalSource(t *testing.T) {
	err := Config{URL: "postgres://localhost/db", Table: Table{Name: "outbox"}, Source: SourceLogical, Partitions: 2}.Validate()
	var ce *relay.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Partitions" {
		t.Fatalf("Validate = %v, want a Partitions error", err)
	}
	for _, n := range []int{-1, MaxPartitions + 1} {
		if err := (Config{URL: "postgres://localhost/db", Table: Table{Name: "outbox"}, Partitions: n}).Validate(); err == nil {
			t.Errorf("Validate with %d partitions = nil, want an error", n)
		}
	}
}

// TestUnpartitionedReplicasStandBack: a replica of one partition that
// started before the table was partitioned (a standby during the change,
// or one whose start raced the first partitioned one) is refused at its
// next Acquire, and a frozen one of the old count is fenced off by the
// epoch the change moves past every earlier one.
func TestUnpartitionedReplicasStandBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for i := range 40 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprintf("agg-%d", i), "{}"); err != nil {
			t.Fatal(err)
		}
	}
	all := readN(t, b.store, relay.Position{}, 40)
	lead, standby := sharer(t, b, "lead", 1), sharer(t, b, "standby", 1)
	if _, err := lead.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lead.Release(ctx); err != nil { // stopped for the change
		t.Fatal(err)
	}
	if _, err := SetPartitions(ctx, Config{URL: b.url, Table: Table{Name: "outbox"}, Partitions: 4}); err != nil {
		t.Fatalf("SetPartitions = %v", err)
	}
	four := sharer(t, b, "four", 4)
	if _, err := four.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := standby.Acquire(ctx); !errors.Is(err, relay.ErrNotSetUp) {
		t.Fatalf("standby of one partition: Acquire after the change = %v, want ErrNotSetUp", err)
	}
	if err := lead.Record(ctx, all[5].Position()); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("old leader: Record after the change = %v, want ErrLeaseLost", err)
	}

	// four freezes past its leases; the table goes to 8 partitions; four
	// thaws and records what it had in flight: fenced, though the new
	// partitions 0 to 3 have its keys.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET lease_until = now() - interval '1 second' WHERE holder = 'four'`); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPartitions(ctx, Config{URL: b.url, Table: Table{Name: "outbox"}, Partitions: 8}); err != nil {
		t.Fatalf("SetPartitions = %v", err)
	}
	eight := sharer(t, b, "eight", 8)
	if _, err := eight.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := four.Record(ctx, all[len(all)-1].Position()); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("frozen replica of 4 partitions: Record after the change to 8 = %v, want ErrLeaseLost", err)
	}
	held, _ := eight.Share()
	var want []int64
	for _, r := range all {
		if slices.Contains(held, r.Aggregate().Partition(8)) {
			want = append(want, r.ID)
		}
	}
	if got := readN(t, eight, relay.Position{}, len(want)); !slices.Equal(rowIDs(got), want) {
		t.Fatalf("eight (partitions %v) reads %v, want %v", held, rowIDs(got), want)
	}
}

// TestQuietPartitionsMoveOn: a replica whose partitions get no rows moves
// their positions past the others' rows, so it does not read them again at
// every poll, and the table's prefix, retention's bound, follows the
// replica that publishes.
func TestQuietPartitionsMoveOn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const parts = 4
	a, c := sharer(t, b, "a", parts), sharer(t, b, "c", parts)
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("c: Acquire = %v, want ErrLeaseHeld", err)
	}
	if err := a.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrHandOver) {
		t.Fatalf("a: Renew = %v, want ErrHandOver", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	heldA, _ := a.Share()
	for i, n := 0, 0; n < 50; i++ {
		ag := relay.Aggregate{Type: "order", ID: fmt.Sprintf("agg-%d", i)}
		if slices.Contains(heldA, ag.Partition(parts)) {
			if _, err := b.pool.Exec(ctx, insertSQL, ag.ID, "{}"); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	got := readN(t, a, relay.Position{}, 50)
	last := got[len(got)-1].Position()
	if err := a.Record(ctx, last); err != nil {
		t.Fatal(err)
	}
	// c finds nothing of its partitions: it moves them past a's rows
	// (waiting for transactions of parallel tests to end).
	deadline := time.Now().Add(30 * time.Second)
	for moved := false; !moved; {
		if rows := readAll(t, c, relay.Position{}); len(rows) != 0 {
			t.Fatalf("c read %d rows of a's partitions", len(rows))
		}
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox_relay_position
			WHERE holder = 'c' AND (txid, id) > ($1::xid8, $2::bigint)`, fmt.Sprint(last.TxID), last.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		moved = n == parts/2
		if !moved && time.Now().After(deadline) {
			t.Fatalf("after 30s, %d of c's %d partitions moved past a's rows", n, parts/2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := a.Renew(ctx, "publishing"); err != nil {
		t.Fatal(err)
	}
	st, err := b.store.Admin().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Position != last.String() || st.Pending != 0 {
		t.Fatalf("the table's prefix is %s with %d pending; want a's last row %s and none", st.Position, st.Pending, last)
	}
}

// TestSetPartitionsRefusesDeadRowsAfterThePrefix: moving partitions back
// to the prefix would publish a dead or dropped row after it again.
func TestSetPartitionsRefusesDeadRowsAfterThePrefix(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := SetPartitions(ctx, Config{URL: b.url, Table: Table{Name: "outbox"}, Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "agg-1", "{}"); err != nil {
		t.Fatal(err)
	}
	row := readN(t, b.store, relay.Position{}, 1)[0]
	if _, err := b.pool.Exec(ctx, `INSERT INTO outbox_relay_parked (outbox_table, id, txid, aggregate_type, aggregate_id, dead, dropped)
		VALUES ('public.outbox', $1, $2::xid8, $3, $4, true, true)`, row.ID, fmt.Sprint(row.TxID), row.AggregateType, row.AggregateID); err != nil {
		t.Fatal(err)
	}
	_, err := SetPartitions(ctx, Config{URL: b.url, Table: Table{Name: "outbox"}, Partitions: 4})
	if !errors.Is(err, relay.ErrNotSetUp) || !strings.Contains(err.Error(), "1 dead or dropped rows") {
		t.Fatalf("SetPartitions with a dropped row after the prefix = %v, want ErrNotSetUp naming it", err)
	}
}

// TestRetentionOfAPartitionedTable: only the holder of partition 0 deletes,
// and only up to the prefix every partition has published.
func TestRetentionOfAPartitionedTable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const parts = 2
	a, c := sharer(t, b, "a", parts), sharer(t, b, "c", parts)
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("c: Acquire = %v, want ErrLeaseHeld", err)
	}
	insertAged(t, b, "early", 10, 2*time.Hour)
	early := readN(t, a, relay.Position{}, 10)
	insertAged(t, b, "late", 10, 2*time.Hour)
	all := readN(t, b.store, relay.Position{}, 20)
	// a has published the first ten; renewing moves the table's prefix.
	if err := a.Record(ctx, early[len(early)-1].Position()); err != nil {
		t.Fatal(err)
	}
	if err := a.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrHandOver) {
		t.Fatalf("a: Renew with c waiting = %v, want ErrHandOver", err)
	}
	cfg := RetentionConfig{Retention: time.Hour}
	if n, err := prune(ctx, t, c, cfg); err != nil || n != 0 {
		t.Fatalf("c, holding no partition, deleted %d (%v), want 0", n, err)
	}
	if n, err := prune(ctx, t, a, cfg); err != nil || n != 10 {
		t.Fatalf("a, holding partition 0, deleted %d (%v), want the 10 rows of the prefix", n, err)
	}
	if left := ids(t, b); !slices.Equal(left, rowIDs(all[10:])) {
		t.Fatalf("rows left %v, want the 10 after the prefix %v", left, rowIDs(all[10:]))
	}
}
