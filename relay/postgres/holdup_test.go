package postgres

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHoldUpWatcherLogsALongTransaction: an open transaction holds a
// committed row back; the watcher says so once, and once when it ends.
func TestHoldUpWatcherLogsALongTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx)
	if _, err := long.Exec(ctx, insertSQL, "long", "long"); err != nil { // takes a transaction id
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "waiting", "waiting"); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	w, err := NewHoldUpWatcher(b.store.Admin(), HoldUpWatcherConfig{Interval: 20 * time.Millisecond, Threshold: 100 * time.Millisecond,
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

// TestHoldUpWatcherWarnsOnceAfterTheThreshold drives the watcher's clock:
// a hold-up is logged only once it has lasted the threshold, and once.
func TestHoldUpWatcherWarnsOnceAfterTheThreshold(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx)
	if _, err := long.Exec(ctx, insertSQL, "long", "long"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "waiting", "waiting"); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	w, err := NewHoldUpWatcher(b.store.Admin(), HoldUpWatcherConfig{Threshold: time.Minute, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
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
