package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type bundle struct {
	url   string
	pool  *pgxpool.Pool
	store *Store
}

func setup(t *testing.T) bundle {
	t.Helper()
	url := testenv.Database(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return bundle{url: url, pool: pool, store: store}
}

// started is setup with the store started; it returns the recorded
// position Start found.
func started(t *testing.T) (bundle, relay.Position) {
	t.Helper()
	b := setup(t)
	pos, err := b.store.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b, pos
}

const insertSQL = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', $1, 'Tested', 'rk', convert_to($2, 'UTF8'))`

// readAll reads every row after the position that is readable now.
func readAll(t *testing.T, s *Store, after relay.Position) []relay.Row {
	t.Helper()
	var all []relay.Row
	for {
		rows, err := s.Read(context.Background(), after, relay.Batch{Rows: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			return all
		}
		all = append(all, rows...)
		after = rows[len(rows)-1].Position()
	}
}

// readN reads until n rows after the position have arrived. The snapshot
// xmin that gates reading is cluster-wide, so a transaction held open by a
// test running in parallel against another database delays rows here; that
// is latency, which this waits out, never loss.
func readN(t *testing.T, s *Store, after relay.Position, n int) []relay.Row {
	t.Helper()
	var all []relay.Row
	deadline := time.Now().Add(30 * time.Second)
	for len(all) < n && time.Now().Before(deadline) {
		rows := readAll(t, s, after)
		if len(rows) == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		all = append(all, rows...)
		after = rows[len(rows)-1].Position()
	}
	if len(all) != n {
		t.Fatalf("read %d rows, want %d", len(all), n)
	}
	return all
}

func TestStoreStartRecordRead(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()
	if pos != (relay.Position{}) {
		t.Fatalf("fresh position %v, want zero", pos)
	}
	for i := range 5 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprint(i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	rows := readN(t, b.store, pos, 5)
	recordSettled(t, b, b.store, rows[2].Position())
	// A restart resumes after the recorded row.
	again, err := Open(Config{URL: b.url, Table: Table{Schema: "public", Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	pos, err = again.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pos != (relay.Position{TxID: rows[2].TxID, ID: rows[2].ID}) {
		t.Fatalf("restarted at %v, want %v", pos, rows[2].Position())
	}
	if rest := readN(t, again, pos, 2); rest[0].ID != rows[3].ID {
		t.Fatalf("after restart read from row %d, want row %d", rest[0].ID, rows[3].ID)
	}
	st, err := again.Admin().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 2 || st.Dead != 0 || st.OldestPendingAgeSeconds <= 0 || st.Position != pos.String() {
		t.Fatalf("status %+v, want 2 pending at %v", st, pos)
	}
}

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

// TestStartRefusesRestoredDatabase is RELIABILITY entry 2.
func TestStartRefusesRestoredDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// As after a restore onto a server whose counter is behind: the
	// position is beyond the next transaction id.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET txid = (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Start(ctx); !errors.Is(err, relay.ErrPositionAhead) {
		t.Fatalf("Start = %v, want ErrPositionAhead", err)
	}
}

func TestStartWaitsForMissingTable(t *testing.T) {
	t.Parallel()
	url := testenv.EmptyDatabase(t)
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, err = store.Start(context.Background())
	if err == nil || errors.Is(err, relay.ErrPositionAhead) || !strings.Contains(err.Error(), "does not exist (run outbox-relay migrate") {
		t.Fatalf("Start on an empty database = %v, want a retryable error saying to run migrate", err)
	}
}
