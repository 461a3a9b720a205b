package postgres

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// leader opens a store named name on b's database, starts it and takes the
// lease.
func leader(t *testing.T, b bundle, name string) *Store {
	t.Helper()
	s := replicaStore(t, b, name)
	if _, err := s.Acquire(context.Background()); err != nil {
		t.Fatalf("%s: Acquire = %v", name, err)
	}
	return s
}

// replicaStore opens and starts a store named name, without the lease.
func replicaStore(t *testing.T, b bundle, name string) *Store {
	t.Helper()
	s, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Replica: name, LeaseTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// insertAged inserts n rows of aggregate agg created age ago, in one
// transaction.
func insertAged(t *testing.T, b bundle, agg string, n int, age time.Duration) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, created_at)
SELECT 'order', $1, 'Tested', 'rk', '\x00', now() - $3 * interval '1 millisecond'
  FROM generate_series(1, $2)`, agg, n, age.Milliseconds()); err != nil {
		t.Fatal(err)
	}
}

// ids returns the ids of the rows left in the outbox, in id order.
func ids(t *testing.T, b bundle) []int64 {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT id FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func rowIDs(rows []relay.Row) []int64 {
	var out []int64
	for _, r := range rows {
		out = append(out, r.ID)
	}
	slices.Sort(out)
	return out
}

func TestPruneDeletesOnlyOldPublishedRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	insertAged(t, b, "old", 10, 2*time.Hour)
	insertAged(t, b, "parked", 3, 2*time.Hour)
	insertAged(t, b, "young", 5, 0)
	published := readN(t, a, relay.Position{}, 18)
	old, parked, young := published[:10], published[10:13], published[13:]
	// The parked rows: a dead one and two waiting behind it.
	park := []relay.Parked{{Row: parked[0], Attempts: 10, Reason: "312 NO_ROUTE", Dead: true}, {Row: parked[1]}, {Row: parked[2]}}
	if err := a.RecordParked(ctx, published[len(published)-1].Position(), park, nil); err != nil {
		t.Fatal(err)
	}
	// Old rows committed after the position are pending: never deleted.
	insertAged(t, b, "pending", 4, 2*time.Hour)
	pending := readN(t, a, published[len(published)-1].Position(), 4)

	var batches []int
	n, err := a.Prune(ctx, RetentionConfig{Retention: time.Hour, OnDeleted: func(n int) { batches = append(batches, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if n != 10 || !slices.Equal(batches, []int{10}) {
		t.Fatalf("Prune deleted %d rows in batches %v, want the 10 old published ones", n, batches)
	}
	want := rowIDs(slices.Concat(parked, young, pending))
	if got := ids(t, b); !slices.Equal(got, want) {
		t.Fatalf("rows left %v, want the parked, young and pending ones %v", got, want)
	}

	// The watermark names the newest row deleted.
	var until time.Time
	var maxID int64
	if err := b.pool.QueryRow(ctx, `SELECT pruned_until, pruned_id FROM outbox_relay_position`).Scan(&until, &maxID); err != nil {
		t.Fatal(err)
	}
	if maxID != old[9].ID || !until.Equal(old[9].CreatedAt) {
		t.Fatalf("watermark %v / %d, want row %d's %v", until, maxID, old[9].ID, old[9].CreatedAt)
	}
	// A second pass finds nothing more; the watermark stays.
	if n, err := a.Prune(ctx, RetentionConfig{Retention: time.Hour}); n != 0 || err != nil {
		t.Fatalf("second pass = %d, %v; want 0, nil", n, err)
	}
	if len(ids(t, b)) != len(want) {
		t.Fatal("the second pass deleted rows")
	}
	// Disabled retention deletes nothing, even when everything is old.
	if n, err := a.Prune(ctx, RetentionConfig{}); n != 0 || err != nil {
		t.Fatalf("Prune with retention 0 = %d, %v; want 0, nil", n, err)
	}
	// Once the young rows are old enough they go too.
	if n, err := a.Prune(ctx, RetentionConfig{Retention: time.Millisecond}); n != 5 || err != nil {
		t.Fatalf("Prune with a 1ms retention = %d, %v; want the 5 young rows", n, err)
	}
	if got, want := ids(t, b), rowIDs(slices.Concat(parked, pending)); !slices.Equal(got, want) {
		t.Fatalf("rows left %v, want the parked and pending ones %v", got, want)
	}
}

func TestPruneOnlyByTheLeaseHolder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")
	standby := replicaStore(t, b, "b")

	insertAged(t, b, "old", 20, 2*time.Hour)
	rows := readN(t, a, relay.Position{}, 20)
	if err := a.Record(ctx, rows[19].Position()); err != nil {
		t.Fatal(err)
	}
	cfg := RetentionConfig{Retention: time.Hour}
	if n, err := standby.Prune(ctx, cfg); n != 0 || err != nil {
		t.Fatalf("standby: Prune = %d, %v; want 0, nil", n, err)
	}
	// The leader's lease lapses (it froze): it deletes nothing either.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET lease_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Prune(ctx, cfg); n != 0 || err != nil {
		t.Fatalf("leader with a lapsed lease: Prune = %d, %v; want 0, nil", n, err)
	}
	if got := ids(t, b); len(got) != 20 {
		t.Fatalf("%d rows left, want all 20", len(got))
	}
	// The standby takes over: the deposed leader still deletes nothing
	// (its epoch is stale), the new one does.
	if _, err := standby.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET holder = 'a'`); err != nil {
		t.Fatal(err) // even under its own name again, a's epoch is stale
	}
	if n, err := a.Prune(ctx, cfg); n != 0 || err != nil {
		t.Fatalf("deposed leader: Prune = %d, %v; want 0, nil", n, err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET holder = 'b'`); err != nil {
		t.Fatal(err)
	}
	if n, err := standby.Prune(ctx, cfg); n != 20 || err != nil {
		t.Fatalf("new leader: Prune = %d, %v; want 20, nil", n, err)
	}
}

func TestPruneDeletesInBoundedBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	insertAged(t, b, "old", 2500, 2*time.Hour)
	insertAged(t, b, "young", 10, 0)
	rows := readN(t, a, relay.Position{}, 2510)
	if err := a.Record(ctx, rows[len(rows)-1].Position()); err != nil {
		t.Fatal(err)
	}
	var batches []int
	n, err := a.Prune(ctx, RetentionConfig{Retention: time.Hour, Batch: 1000, Pause: time.Millisecond,
		OnDeleted: func(n int) { batches = append(batches, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if n != 2500 || !slices.Equal(batches, []int{1000, 1000, 500}) {
		t.Fatalf("Prune deleted %d rows in batches %v, want 2500 in 1000, 1000, 500", n, batches)
	}
	if got := ids(t, b); !slices.Equal(got, rowIDs(rows[2500:])) {
		t.Fatalf("rows left %v, want the 10 young ones", got)
	}
}

func TestPruneSkipsParkedRowsThatFillABatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	// A dead row with more rows waiting behind it than a batch holds, at
	// the front of the outbox: retention walks past them.
	insertAged(t, b, "stuck", 30, 2*time.Hour)
	insertAged(t, b, "old", 25, 2*time.Hour)
	rows := readN(t, a, relay.Position{}, 55)
	park := []relay.Parked{{Row: rows[0], Attempts: 10, Reason: "312 NO_ROUTE", Dead: true}}
	for _, r := range rows[1:30] {
		park = append(park, relay.Parked{Row: r})
	}
	if err := a.RecordParked(ctx, rows[54].Position(), park, nil); err != nil {
		t.Fatal(err)
	}
	var batches []int
	n, err := a.Prune(ctx, RetentionConfig{Retention: time.Hour, Batch: 10, Pause: time.Millisecond,
		OnDeleted: func(n int) { batches = append(batches, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if n != 25 || !slices.Equal(batches, []int{10, 10, 5}) {
		t.Fatalf("Prune deleted %d rows in batches %v, want 25 in 10, 10, 5", n, batches)
	}
	if got := ids(t, b); !slices.Equal(got, rowIDs(rows[:30])) {
		t.Fatalf("rows left %v, want the 30 parked ones", got)
	}
}

func TestRunRetentionDeletesUntilStopped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	insertAged(t, b, "old", 7, 2*time.Hour)
	rows := readN(t, a, relay.Position{}, 7)
	if err := a.Record(ctx, rows[6].Position()); err != nil {
		t.Fatal(err)
	}
	deleted := make(chan int, 16)
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		RunRetention(rctx, a, RetentionConfig{Retention: time.Hour, Interval: 20 * time.Millisecond,
			OnDeleted: func(n int) { deleted <- n }})
	})
	select {
	case n := <-deleted:
		if n != 7 {
			t.Errorf("deleted %d rows, want 7", n)
		}
	case <-time.After(30 * time.Second):
		t.Error("RunRetention deleted nothing")
	}
	stop()
	wg.Wait() // returns once stopped (the leak check would catch it otherwise)

	// Retention zero returns at once.
	RunRetention(ctx, a, RetentionConfig{})
}

// partitionedOutbox is an outbox range-partitioned by created_at, as README
// ("Retention") tells a team that drops partitions instead of deleting
// rows to create it before schema.sql: the same columns and object names,
// with the partition key in the primary key and the event_id constraint.
const partitionedOutbox = `
CREATE TABLE outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    exchange       text        NULL,
    routing_key    text        NOT NULL,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL DEFAULT 'application/json',
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT outbox_pkey PRIMARY KEY (txid, id, created_at),
    CONSTRAINT outbox_event_id_key UNIQUE (event_id, created_at),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_old PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO (now() - interval '1 hour');
CREATE TABLE outbox_new PARTITION OF outbox FOR VALUES FROM (now() - interval '1 hour') TO (MAXVALUE);`

// TestPartitionedOutbox checks what README says of a partitioned outbox:
// schema.sql applies over it, and reading, parking, status, retention and
// replay work on it.
func TestPartitionedOutbox(t *testing.T) {
	t.Parallel()
	url := testenv.EmptyDatabase(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, partitionedOutbox); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := pool.Exec(ctx, outboxrelay.Schema); err != nil {
			t.Fatalf("schema.sql over a partitioned outbox: %v", err)
		}
	}
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	b := bundle{url: url, pool: pool, store: store}
	a := leader(t, b, "a")

	insertAged(t, b, "old", 5, 2*time.Hour)
	insertAged(t, b, "young", 5, 0)
	rows := readN(t, a, relay.Position{}, 10)
	// One old row is parked: retention keeps it.
	if err := a.RecordParked(ctx, rows[9].Position(), []relay.Parked{{Row: rows[0], Attempts: 1, Reason: "312 NO_ROUTE"}}, nil); err != nil {
		t.Fatal(err)
	}
	if heads, err := a.DueHeads(ctx, relay.Batch{Rows: 10}, relay.DeadRowsHold); err != nil || len(heads) != 1 || heads[0].Row.ID != rows[0].ID {
		t.Fatalf("DueHeads = %v, %v; want row %d", heads, err, rows[0].ID)
	}
	if st, err := a.Status(ctx); err != nil || st.Pending != 0 {
		t.Fatalf("Status = %+v, %v; want nothing pending", st, err)
	}
	if n, err := a.Prune(ctx, RetentionConfig{Retention: time.Hour}); n != 4 || err != nil {
		t.Fatalf("Prune = %d, %v; want the 4 old published rows", n, err)
	}
	if got := ids(t, b); !slices.Equal(got, rowIDs(append([]relay.Row{rows[0]}, rows[5:]...))) {
		t.Fatalf("rows left %v, want the parked one and the young ones", got)
	}
	plan, err := a.PlanReplay(ctx, ReplaySelection{})
	if err != nil || !plan.Pruned || plan.Parked != 1 {
		t.Fatalf("PlanReplay = %+v, %v; want 1 parked and pruned rows", plan, err)
	}
	if got := replayAll(t, a, plan, ReplaySelection{}); len(got) != 5 {
		t.Fatalf("replayed %v, want the 5 young rows", got)
	}
}
