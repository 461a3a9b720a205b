package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// recorder is a slog.Handler that keeps the records it is given.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}

func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// lines returns the records let through so far as "message id=… suppressed=…".
func (r *recorder) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.records {
		s := rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "id" || a.Key == "suppressed" {
				s += " " + a.String()
			}
			return true
		})
		out = append(out, s)
	}
	return out
}

func record(at time.Time, level slog.Level, msg string, attrs ...any) slog.Record {
	r := slog.NewRecord(at, level, msg, 0)
	r.Add(attrs...)
	return r
}

func TestThrottleFoldsRepeatsOfOneRowOnly(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newThrottle(rec, 30*time.Second)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const dead = "row is dead"
	// Seven rows die within a second: seven lines.
	for id := 1; id <= 7; id++ {
		_ = h.Handle(ctx, record(t0.Add(time.Duration(id)*100*time.Millisecond), slog.LevelError, dead,
			"id", id, "aggregate_type", "order", "aggregate_id", fmt.Sprint(id), "attempts", 10, "reason", "no route"))
	}
	// Row 3 again, with another reason and attempt count: folded.
	_ = h.Handle(ctx, record(t0.Add(2*time.Second), slog.LevelError, dead, "id", 3, "aggregate_type", "order", "aggregate_id", "3", "attempts", 11, "reason", "nack"))
	// A warning that names no row folds by message, whatever its error says.
	_ = h.Handle(ctx, record(t0.Add(3*time.Second), slog.LevelWarn, "publishing failed; retrying", "err", "connection refused"))
	_ = h.Handle(ctx, record(t0.Add(4*time.Second), slog.LevelWarn, "publishing failed; retrying", "err", "timeout"))
	// Once the interval has passed, row 3 shows again, with the count.
	_ = h.Handle(ctx, record(t0.Add(31*time.Second), slog.LevelError, dead, "id", 3, "aggregate_type", "order", "aggregate_id", "3"))
	// Info lines always pass.
	_ = h.Handle(ctx, record(t0.Add(32*time.Second), slog.LevelInfo, "connected", "id", 3))
	_ = h.Handle(ctx, record(t0.Add(33*time.Second), slog.LevelInfo, "connected", "id", 3))

	want := []string{
		dead + " id=1", dead + " id=2", dead + " id=3", dead + " id=4", dead + " id=5", dead + " id=6", dead + " id=7",
		"publishing failed; retrying",
		dead + " id=3 suppressed=1",
		"connected id=3", "connected id=3",
	}
	got := rec.lines()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("let through:\n%q\nwant:\n%q", got, want)
	}
}

func TestThrottleKeysByAggregateAndLoggerAttrs(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newThrottle(rec, 30*time.Second)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Rows without an id, told apart by their aggregate.
	for i, agg := range []string{"1", "2", "1"} {
		_ = h.Handle(ctx, record(t0.Add(time.Duration(i)*time.Second), slog.LevelWarn, "held back", "aggregate_type", "order", "aggregate_id", agg))
	}
	// Row attributes given to a logger count as the record's own.
	a := h.WithAttrs([]slog.Attr{slog.Int("id", 1), slog.String("reason", "x")})
	b := h.WithAttrs([]slog.Attr{slog.Int("id", 2), slog.String("reason", "x")})
	for _, l := range []slog.Handler{a, b, a, b.WithAttrs([]slog.Attr{slog.String("reason", "y")})} {
		_ = l.Handle(ctx, record(t0.Add(5*time.Second), slog.LevelWarn, "parked"))
	}
	if got := len(rec.lines()); got != 4 {
		t.Fatalf("let %d through, want 4 (two aggregates, two rows): %q", got, rec.lines())
	}
}

func TestThrottleStaysBounded(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newThrottle(rec, 30*time.Second)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Many rows within one interval: past the bound they fold by message.
	for id := range 3 * maxThrottled {
		_ = h.Handle(ctx, record(t0.Add(time.Duration(id)*time.Millisecond), slog.LevelWarn, "parked", "id", id))
	}
	if n := len(h.state.seen); n > maxThrottled+1 {
		t.Fatalf("%d entries remembered, want at most %d", n, maxThrottled+1)
	}
	if got, want := len(rec.lines()), maxThrottled+1; got != want {
		t.Fatalf("let %d through, want %d (one per row up to the bound, then one for the rest)", got, want)
	}
	// An interval later the old entries make room for new rows again.
	later := t0.Add(time.Minute)
	for id := range maxThrottled / 2 {
		_ = h.Handle(ctx, record(later.Add(time.Duration(id)*time.Millisecond), slog.LevelWarn, "parked", "id", 1_000_000+id))
	}
	if n := len(h.state.seen); n > maxThrottled+1 {
		t.Fatalf("%d entries remembered after an interval, want at most %d", n, maxThrottled+1)
	}
	if got, want := len(rec.lines()), maxThrottled+1+maxThrottled/2; got != want {
		t.Fatalf("let %d through, want %d: each new row once", got, want)
	}
}
