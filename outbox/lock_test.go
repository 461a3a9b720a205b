package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/outbox"
)

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func event(a outbox.Aggregate) outbox.Event {
	return outbox.Event{AggregateType: a.Type, AggregateID: a.ID, EventType: "Tested", RoutingKey: "rk"}
}

// waitingForLock waits until a session of the database waits for an
// advisory lock, and fails the test if none does within a minute.
func waitingForLock(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no session waits for an ordering lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// xid returns the transaction id of tx, assigning one if it has none.
func xid(t *testing.T, tx pgx.Tx) uint64 {
	t.Helper()
	var s string
	if err := tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBegin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	order42 := outbox.Aggregate{Type: "order", ID: "42"}

	t.Run("a second transaction of the aggregate waits, then gets the larger id", func(t *testing.T) {
		t.Parallel()
		pool := newPool(t, setup(t).url)
		first, err := outbox.Begin(ctx, pool, order42)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Rollback(ctx)
		second := make(chan *outbox.Tx, 1)
		go func() {
			tx, err := outbox.Begin(ctx, pool, order42)
			if err != nil {
				t.Error(err)
			}
			second <- tx
		}()
		waitingForLock(t, pool)
		// The first writes only now, after the second began waiting:
		// the row lock's order, which an UPDATE would take, is not this.
		if err := outbox.Write(ctx, first, event(order42)); err != nil {
			t.Fatal(err)
		}
		x1 := xid(t, first)
		if err := first.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		tx := <-second
		if tx == nil {
			t.FailNow()
		}
		defer tx.Rollback(ctx)
		if x2 := xid(t, tx); x2 <= x1 {
			t.Errorf("the later transaction's id %d is not above the earlier one's %d", x2, x1)
		}
	})

	t.Run("aggregates locked in opposite orders do not deadlock", func(t *testing.T) {
		t.Parallel()
		pool := newPool(t, setup(t).url)
		a, b := outbox.Aggregate{Type: "order", ID: "1"}, outbox.Aggregate{Type: "order", ID: "2"}
		first, err := outbox.Begin(ctx, pool, a, b)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Rollback(ctx)
		done := make(chan error, 1)
		go func() {
			tx, err := outbox.Begin(ctx, pool, b, a)
			if err == nil {
				err = tx.Commit(ctx)
			}
			done <- err
		}()
		waitingForLock(t, pool)
		if err := first.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("second transaction: %v", err)
		}
	})

	t.Run("writes only the events of aggregates it locked", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tx, err := outbox.Begin(ctx, b.conn, order42)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		other := outbox.Aggregate{Type: "order", ID: "43"}
		err = outbox.Write(ctx, tx, event(order42), event(other))
		if !errors.Is(err, outbox.ErrNotLocked) || !strings.Contains(err.Error(), "order/43") {
			t.Fatalf("write of an unlocked aggregate: %v, want ErrNotLocked naming order/43", err)
		}
		if err := tx.Lock(ctx, other); err != nil {
			t.Fatalf("lock before the first write: %v", err)
		}
		if err := outbox.Write(ctx, tx, event(order42), event(other)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		checkLockKeys(t, b.conn, 2)
	})

	t.Run("begins and locks in one round trip, any text in the names", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		odd := outbox.Aggregate{Type: `o'r\der`, ID: `4'2\' OR true --`}
		for _, conforming := range []string{"on", "off"} {
			if _, err := b.conn.Exec(ctx, "SET standard_conforming_strings = "+conforming); err != nil {
				t.Fatal(err)
			}
			trips := b.wire.roundTrips()
			tx, err := outbox.BeginTx(ctx, b.conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, odd)
			if err != nil {
				t.Fatal(err)
			}
			if got := b.wire.roundTrips() - trips; got != 1 {
				t.Errorf("Begin took %d round trips, want 1", got)
			}
			var iso string
			if err := tx.QueryRow(ctx, `SHOW transaction_isolation`).Scan(&iso); err != nil || iso != "repeatable read" {
				t.Errorf("isolation %q (%v), want repeatable read", iso, err)
			}
			if err := outbox.Write(ctx, tx, event(odd)); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		checkLockKeys(t, b.conn, 2)
	})

	t.Run("a Begin that fails leaves the connection usable", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		holder, err := outbox.Begin(ctx, newPool(t, b.url), order42)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Rollback(ctx)
		if _, err := b.conn.Exec(ctx, "SET lock_timeout = '50ms'"); err != nil {
			t.Fatal(err)
		}
		if _, err := outbox.Begin(ctx, b.conn, order42); err == nil || !strings.Contains(err.Error(), "lock timeout") {
			t.Fatalf("Begin while another holds the lock, with a lock timeout: %v", err)
		}
		var status string
		if err := b.conn.QueryRow(ctx, `SELECT 'idle'`).Scan(&status); err != nil {
			t.Fatalf("the connection is not usable after the failed Begin: %v", err)
		}
	})

	t.Run("Lock on the caller's transaction checks its writes", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		plain, err := b.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Rollback(ctx)
		tx, err := outbox.Lock(ctx, plain, order42)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Write(ctx, tx, event(outbox.Aggregate{Type: "order", ID: "7"})); !errors.Is(err, outbox.ErrNotLocked) {
			t.Errorf("write of an unlocked aggregate: %v, want ErrNotLocked", err)
		}
		if err := outbox.Write(ctx, tx, event(order42)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		checkLockKeys(t, b.conn, 1)
	})

	t.Run("refuses a lock after the first write", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tx, err := b.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if err := outbox.Write(ctx, tx, event(order42)); err != nil {
			t.Fatal(err)
		}
		_, err = outbox.Lock(ctx, tx, order42)
		if !errors.Is(err, outbox.ErrLockAfterWrite) {
			t.Fatalf("lock after a write: %v, want ErrLockAfterWrite", err)
		}
	})

	t.Run("refuses empty aggregates before touching the database", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, aggs := range [][]outbox.Aggregate{nil, {{Type: "order"}}, {{ID: "1"}}, {{Type: "order", ID: "a\x00b"}}} {
			if tx, err := outbox.Begin(ctx, b.conn, aggs...); err == nil {
				tx.Rollback(ctx)
				t.Errorf("Begin(%q) succeeded", aggs)
			}
		}
		if q := b.tracer.take(); len(q) != 0 {
			t.Errorf("refused aggregates sent %q", q)
		}
	})

	t.Run("a Writer locks with the function of its table's schema", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if _, err := b.conn.Exec(ctx, `CREATE SCHEMA app; SET search_path = app;`+outboxrelay.Schema+`; RESET search_path;
			DROP FUNCTION public.outbox_lock(text[])`); err != nil {
			t.Fatal(err)
		}
		w, err := outbox.NewWriter("app.outbox")
		if err != nil {
			t.Fatal(err)
		}
		tx, err := w.Begin(ctx, b.conn, order42)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if err := w.Write(ctx, tx, event(order42)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM app.outbox WHERE lock_keys IS NOT NULL`).Scan(&n); err != nil || n != 1 {
			t.Errorf("locked rows in app.outbox: %d, %v; want 1", n, err)
		}
		// Without the function in search_path, the package-level Lock
		// says what to do.
		if _, err := outbox.Begin(ctx, b.conn, order42); err == nil || !strings.Contains(err.Error(), "migrate") {
			t.Errorf("Begin without outbox_lock on search_path: %v, want a hint to migrate", err)
		}
	})

	t.Run("LockSQL on database/sql", func(t *testing.T) {
		t.Parallel()
		db := stdlib.OpenDB(*connect(t, setup(t).url, nil).Config())
		t.Cleanup(func() { db.Close() })
		tx, err := db.BeginTx(ctx, &sql.TxOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		var w outbox.Writer
		if err := w.LockSQL(ctx, tx, order42); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteSQL(ctx, tx, event(order42)); err != nil {
			t.Fatal(err)
		}
		if err := w.LockSQL(ctx, tx, order42); !errors.Is(err, outbox.ErrLockAfterWrite) {
			t.Errorf("LockSQL after a write: %v, want ErrLockAfterWrite", err)
		}
	})
}

// checkLockKeys checks that every row of outbox records the key of its own
// aggregate among its transaction's locks, and that there are want rows.
func checkLockKeys(t *testing.T, conn *pgx.Conn, want int) {
	t.Helper()
	var n, locked int
	if err := conn.QueryRow(context.Background(), `SELECT count(*),
		count(*) FILTER (WHERE outbox_aggregate_key(aggregate_type, aggregate_id)::text = ANY (string_to_array(lock_keys, ',')))
		FROM outbox`).Scan(&n, &locked); err != nil {
		t.Fatal(err)
	}
	if n != want || locked != want {
		t.Errorf("%d rows, %d recording their aggregate's lock; want %d of each", n, locked, want)
	}
}

// TestWriteWithoutLockRecordsNone: rows of a transaction that took no
// ordering lock say so, for the relay to report.
func TestWriteWithoutLockRecordsNone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	// A session that locked once, in an earlier transaction: the setting
	// it used then must not leak into the next.
	tx, err := outbox.Begin(ctx, b.conn, outbox.Aggregate{Type: "order", ID: "1"})
	if err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	if err := outbox.Write(ctx, b.conn, event(outbox.Aggregate{Type: "order", ID: "1"})); err != nil {
		t.Fatal(err)
	}
	var unlocked int
	if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE lock_keys IS NULL`).Scan(&unlocked); err != nil || unlocked != 1 {
		t.Errorf("rows without lock keys: %d, %v; want 1", unlocked, err)
	}
}
