package postgres

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// holdUp begins a transaction that writes a row ("long") and stays open,
// and commits a row after it ("waiting"). The transaction is rolled back
// at cleanup unless the test ends it.
func holdUp(t *testing.T, b bundle) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = long.Rollback(context.Background()) })
	if _, err := long.Exec(ctx, insertSQL, "long", "long"); err != nil { // takes a transaction id
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "waiting", "waiting"); err != nil {
		t.Fatal(err)
	}
	return long
}

// TestHoldUpWatcherLogsALongTransaction: in a table whose replicas share
// the work (RELAY_PARTITIONS), an open transaction holds a committed row
// back; the watcher says so once, and once when it ends.
func TestHoldUpWatcherLogsALongTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := sharer(t, b, "a", 2)
	long := holdUp(t, b)

	var logs syncBuffer
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	w, err := NewHoldUpWatcher(s.Admin(), HoldUpWatcherConfig{Interval: 20 * time.Millisecond, Threshold: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { w.Run(ctx) })
	waitFor := func(s string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), s); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never logged %q; log:\n%s", s, logs.String())
			}
		}
	}
	waitFor("publishing held back")
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("no longer held back")
	if n := strings.Count(logs.String(), "publishing held back"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs.String())
	}
}

// TestNoHoldUpInAnUnpartitionedTable: the poll source reads an
// unpartitioned table past running transactions, so an open transaction
// holds no committed row back, and none is reported.
func TestNoHoldUpInAnUnpartitionedTable(t *testing.T) {
	t.Parallel()
	b, _ := started(t)
	ctx := context.Background()
	holdUp(t, b)
	if x, err := b.store.Admin().HeldBack(ctx); x != nil || err != nil {
		t.Fatalf("HeldBack = %+v, %v; want nothing held back", x, err)
	}
	if rows := readAll(t, b.store, relay.Position{}); len(rows) != 1 || rows[0].AggregateID != "waiting" {
		t.Fatalf("read %d rows while the transaction is open, want the committed one", len(rows))
	}
}

// TestHoldUpWatcherWarnsOnceAfterTheThreshold drives the watcher's clock:
// a hold-up is logged only once it has lasted the threshold, and once.
func TestHoldUpWatcherWarnsOnceAfterTheThreshold(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	s := sharer(t, b, "a", 2)
	holdUp(t, b)

	var logs syncBuffer
	w, err := NewHoldUpWatcher(s.Admin(), HoldUpWatcherConfig{Threshold: time.Minute, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	w.now = func() time.Time { return now }
	check := func(warnings int) {
		t.Helper()
		if err := w.runOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(logs.String(), "publishing held back"); n != warnings {
			t.Fatalf("%d warnings, want %d; log:\n%s", n, warnings, logs.String())
		}
	}
	check(0) // first seen
	now = now.Add(59 * time.Second)
	check(0)
	now = now.Add(time.Second)
	check(1)
	now = now.Add(time.Hour)
	check(1)
}

func TestHoldUpWatcherConfigValidate(t *testing.T) {
	t.Parallel()
	for _, cfg := range []HoldUpWatcherConfig{{Interval: -time.Second}, {Threshold: -time.Second}} {
		if _, err := NewHoldUpWatcher(nil, cfg); err == nil {
			t.Errorf("NewHoldUpWatcher(%+v): no error", cfg)
		}
	}
}
