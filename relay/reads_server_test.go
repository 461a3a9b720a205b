package relay_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// TestWakeUpCutsThePollShort: with polls an hour apart, a row committed
// after the first read arrives only because of the wake-up.
func TestWakeUpCutsThePollShort(t *testing.T) {
	t.Parallel()
	b := setup(t)
	wake := make(chan struct{}, 1)
	read := make(chan struct{}, 10)
	stop := run(t, relay.Config{PollInterval: time.Hour, MinPoll: time.Hour, Wake: wake},
		readSignal{Store: b.store, read: read}, b.broker)
	defer stop()
	<-read // the first read found nothing; the next poll is an hour away
	b.write(t, "a", 1, 1)
	// Keep waking: a transaction of a parallel test can hold the row back
	// from one read (the snapshot xmin is cluster-wide).
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case wake <- struct{}{}:
			case <-done:
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	b.delivered(t, 1)
}

// readSignal tells the test each time the relay has read.
type readSignal struct {
	relay.Store
	read chan struct{}
}

func (s readSignal) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	rows, err := s.Store.Read(ctx, after, b)
	select {
	case s.read <- struct{}{}:
	default:
	}
	return rows, err
}

// TestIdleLeaderConnectsToTheBroker: with nothing to publish, the leader
// still opens its broker connection, so an outage shows before a row
// waits on it.
func TestIdleLeaderConnectsToTheBroker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stop := run(t, relay.Config{}, b.store, b.broker)
	defer stop()
	for deadline := time.Now().Add(30 * time.Second); !b.broker.Connected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the idle leader never connected to the broker")
		}
	}
}

// barrier holds calls until it opens: each held call first tells the test
// it arrived (on arrived, if nobody took the last notice yet).
type barrier struct {
	arrived chan struct{}
	open    chan struct{}
}

func newBarrier() *barrier {
	return &barrier{arrived: make(chan struct{}, 1), open: make(chan struct{})}
}

// hold waits until the barrier opens or ctx ends.
func (b *barrier) hold(ctx context.Context) error {
	select {
	case b.arrived <- struct{}{}:
	default:
	}
	select {
	case <-b.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gatedReads lets reads through until one returns rows, and holds every
// later one at the barrier. (An early read may find nothing: another
// test's transaction on the same server can hold the rows back for a
// moment.)
type gatedReads struct {
	relay.Store
	found atomic.Bool
	*barrier
}

func (s *gatedReads) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	if s.found.Load() {
		if err := s.hold(ctx); err != nil {
			return nil, err
		}
	}
	rows, err := s.Store.Read(ctx, after, b)
	if len(rows) > 0 {
		s.found.Store(true)
	}
	return rows, err
}

// TestSlowReadDoesNotHoldUpRecording: the next batch is read beside the
// loop, so while a read hangs, the batch already published is still
// confirmed and recorded.
func TestSlowReadDoesNotHoldUpRecording(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "slow", 10, 2)
	store := &gatedReads{Store: b.store, barrier: newBarrier()}
	recorded := make(chan int, 100)
	cfg := relay.Config{BatchSize: 10, Hooks: relay.Hooks{Recorded: func(_ relay.Position, rows int) { recorded <- rows }}}
	stop := run(t, cfg, store, b.broker)
	defer stop()
	<-store.arrived
	total := 0
	for total < 10 {
		select {
		case n := <-recorded:
			total += n
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of 10 rows recorded while the next read hung: the read holds up the loop", total)
		}
	}
	close(store.open)
	b.write(t, "after", 3, 1)
	b.deliveredOf(t, 3, "after0")
}

// heldRecords holds every position write at the barrier.
type heldRecords struct {
	relay.Store
	*barrier
}

func (s *heldRecords) Record(ctx context.Context, pos relay.Position) error {
	if err := s.hold(ctx); err != nil {
		return err
	}
	return s.Store.Record(ctx, pos)
}

// countingPublisher counts the messages handed to the broker.
type countingPublisher struct {
	relay.Publisher
	sent atomic.Int64
}

func (c *countingPublisher) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	c.sent.Add(int64(len(msgs)))
	return c.Publisher.Publish(ctx, msgs)
}

// TestWindowCountsRowsAwaitingTheirPositionWrite: confirmed rows whose
// position write has not finished still count against the window, so
// however slow the write, at most a window of rows is published and not
// recorded: what a crash would publish again.
func TestWindowCountsRowsAwaitingTheirPositionWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "held", 100, 5)
	store := &heldRecords{Store: b.store, barrier: newBarrier()}
	pub := &countingPublisher{Publisher: b.broker}
	stop := run(t, relay.Config{BatchSize: 10}, store, pub)
	defer stop()
	<-store.arrived
	time.Sleep(500 * time.Millisecond) // room for the relay to overrun, if it would
	if n := pub.sent.Load(); n > 20 {
		t.Fatalf("%d messages published while the first position write hung, want at most the window of 20", n)
	}
	close(store.open)
	if seen := b.deliveredOf(t, 100, ""); len(seen) != 100 {
		t.Fatalf("%d delivered, want 100", len(seen))
	}
}
