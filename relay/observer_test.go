package relay_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// counting is an Observer that counts what it is told.
type counting struct {
	mu        sync.Mutex
	alive     int
	leading   []bool
	sent      int
	confirmed int
	latencies int
	failed    map[relay.Failure]int
	unlocked  int
	skipped   int
}

func (c *counting) Alive() { c.mu.Lock(); c.alive++; c.mu.Unlock() }
func (c *counting) Leading(l bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leading = append(c.leading, l)
}
func (c *counting) Sent(n int) { c.mu.Lock(); c.sent += n; c.mu.Unlock() }
func (c *counting) Confirmed(n int, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.confirmed += n
	if d > 0 {
		c.latencies++
	}
}
func (c *counting) Failed(f relay.Failure) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed == nil {
		c.failed = map[relay.Failure]int{}
	}
	c.failed[f]++
}
func (c *counting) Blocked(bool)   {}
func (c *counting) Unlocked(n int) { c.mu.Lock(); c.unlocked += n; c.mu.Unlock() }
func (c *counting) Skipped(n int)  { c.mu.Lock(); c.skipped += n; c.mu.Unlock() }

// failingRead fails the first read of the outbox, as a dropped database
// connection does.
type failingRead struct {
	relay.Store
	failed atomic.Bool
}

func (s *failingRead) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	if s.failed.CompareAndSwap(false, true) {
		return nil, errors.New("connection reset by peer")
	}
	return s.Store.Read(ctx, after, b)
}

func TestObserverIsToldEverything(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 1000, 7)
	obs := &counting{}
	pub := &faulty{Publisher: b.broker, targets: map[int64]bool{500: true}}
	stop := run(t, relay.Config{BatchSize: 100, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, Observer: obs},
		&failingRead{Store: b.store}, pub)
	seen := b.delivered(t, 1000)
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	seen = b.rest(t, seen)

	obs.mu.Lock()
	defer obs.mu.Unlock()
	delivered := 0
	for _, n := range seen {
		delivered += n
	}
	if obs.sent < delivered {
		t.Errorf("told of %d messages sent, but %d were delivered", obs.sent, delivered)
	}
	// Every row is confirmed once, except those in doubt after the
	// injected failure, which are confirmed again.
	if obs.confirmed < 1000 || obs.confirmed > delivered {
		t.Errorf("told of %d rows confirmed, want 1000 to %d", obs.confirmed, delivered)
	}
	if obs.latencies == 0 {
		t.Error("no confirm latency was positive")
	}
	if obs.failed[relay.FailureDatabase] != 1 || obs.failed[relay.FailureBroker] != 1 {
		t.Errorf("failures %v, want one database (the read) and one broker (the injected confirm)", obs.failed)
	}
	if len(obs.leading) != 2 || !obs.leading[0] || obs.leading[1] {
		t.Errorf("leading %v, want [true false]: took the lease, then stopped", obs.leading)
	}
	if obs.alive == 0 {
		t.Error("never told the loop was alive")
	}
}

func TestObserverCountsRejectedRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('agg', 'lonely', 'Lonely', 'amq.direct', 'nobody.listens', '{}')`); err != nil {
		t.Fatal(err)
	}
	obs := &counting{}
	cfg := parkFast
	cfg.Observer = obs
	stop := run(t, cfg, b.store, b.broker)
	defer stop()
	waitDead(t, b, 1)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	// The broker refuses the row once per attempt: in its first batch
	// (attempt 1, parked at once, no failed round), and at each retry.
	if got, want := obs.failed[relay.FailureRejected], cfg.MaxAttempts; got != want {
		t.Fatalf("%d rejections counted, want %d", got, want)
	}
}
