package postgres

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// prune runs one retention pass of s under cfg.
func prune(ctx context.Context, t *testing.T, s *Store, cfg RetentionConfig) (int, error) {
	t.Helper()
	r, err := NewRetention(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r.runOnce(ctx)
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
	recordSettled(t, b, a, published[len(published)-1].Position())
	// Old rows committed after the position are pending: never deleted.
	insertAged(t, b, "pending", 4, 2*time.Hour)
	pending := readN(t, a, published[len(published)-1].Position(), 4)

	var batches []int
	n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour, OnDeleted: func(n int) { batches = append(batches, n) }})
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
	if n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour}); n != 0 || err != nil {
		t.Fatalf("second pass = %d, %v; want 0, nil", n, err)
	}
	if len(ids(t, b)) != len(want) {
		t.Fatal("the second pass deleted rows")
	}
	// Disabled retention deletes nothing, even when everything is old.
	if n, err := prune(ctx, t, a, RetentionConfig{}); n != 0 || err != nil {
		t.Fatalf("Prune with retention 0 = %d, %v; want 0, nil", n, err)
	}
	// Once the young rows are old enough they go too.
	if n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Millisecond}); n != 5 || err != nil {
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
	recordSettled(t, b, a, rows[19].Position())
	cfg := RetentionConfig{Retention: time.Hour}
	if n, err := prune(ctx, t, standby, cfg); n != 0 || err != nil {
		t.Fatalf("standby: Prune = %d, %v; want 0, nil", n, err)
	}
	// The leader's lease lapses (it froze): it deletes nothing either.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET lease_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if n, err := prune(ctx, t, a, cfg); n != 0 || err != nil {
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
	if n, err := prune(ctx, t, a, cfg); n != 0 || err != nil {
		t.Fatalf("deposed leader: Prune = %d, %v; want 0, nil", n, err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET holder = 'b'`); err != nil {
		t.Fatal(err)
	}
	if n, err := prune(ctx, t, standby, cfg); n != 20 || err != nil {
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
	recordSettled(t, b, a, rows[len(rows)-1].Position())
	var batches []int
	n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour, Batch: 1000, Pause: time.Millisecond,
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
	recordSettled(t, b, a, rows[54].Position())
	var batches []int
	n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour, Batch: 10, Pause: time.Millisecond,
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

func TestRetentionRunDeletesUntilStopped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	insertAged(t, b, "old", 7, 2*time.Hour)
	rows := readN(t, a, relay.Position{}, 7)
	recordSettled(t, b, a, rows[6].Position())
	deleted := make(chan int, 16)
	r, err := NewRetention(a, RetentionConfig{Retention: time.Hour, Interval: 20 * time.Millisecond,
		OnDeleted: func(n int) { deleted <- n }})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(rctx) })
	select {
	case n := <-deleted:
		if n != 7 {
			t.Errorf("deleted %d rows, want 7", n)
		}
	case <-time.After(30 * time.Second):
		t.Error("Run deleted nothing")
	}
	stop()
	wg.Wait() // returns once stopped (the leak check would catch it otherwise)

	// Retention zero returns at once.
	off, err := NewRetention(a, RetentionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	off.Run(ctx)
}

func TestRetentionConfigValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		field string
		cfg   RetentionConfig
	}{
		{"Interval", RetentionConfig{Interval: -time.Second}},
		{"Batch", RetentionConfig{Batch: -1}},
		{"Pause", RetentionConfig{Pause: -time.Second}},
		{"Timeout", RetentionConfig{Timeout: -time.Second}},
		{"Timeout", RetentionConfig{Timeout: time.Microsecond}},
	} {
		var ce *relay.ConfigError
		if err := c.cfg.Validate(); !errors.As(err, &ce) || ce.Field != c.field {
			t.Errorf("%+v: Validate = %v, want a ConfigError naming %s", c.cfg, err, c.field)
		}
	}
	if err := (RetentionConfig{Retention: -time.Hour}).Validate(); err != nil {
		t.Errorf("a negative retention disables deletion, Validate = %v", err)
	}
}
