package relay_test

import (
	"context"
	"slices"
	"sync"
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
	eventually(t, "the idle leader connects to the broker", b.broker.Connected)
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

// heldRecords holds every position write at the barrier. It counts the
// rows read and tells of each lease renewal, for the test to know what the
// relay has done meanwhile.
type heldRecords struct {
	relay.Store
	*barrier
	rowsRead atomic.Int64
	renewed  chan struct{}
}

func (s *heldRecords) Record(ctx context.Context, pos relay.Position) error {
	if err := s.hold(ctx); err != nil {
		return err
	}
	return s.Store.Record(ctx, pos)
}

func (s *heldRecords) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	rows, err := s.Store.Read(ctx, after, b)
	s.rowsRead.Add(int64(len(rows)))
	return rows, err
}

func (s *heldRecords) Renew(ctx context.Context, state string) error {
	err := s.Store.Renew(ctx, state)
	select {
	case s.renewed <- struct{}{}:
	default:
	}
	return err
}

// countingPublisher counts the messages handed to the broker and keeps
// the broker's answers.
type countingPublisher struct {
	relay.Publisher
	sent atomic.Int64

	mu    sync.Mutex
	confs []relay.Confirmation
}

func (c *countingPublisher) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	c.sent.Add(int64(len(msgs)))
	conf := c.Publisher.Publish(ctx, msgs)
	c.mu.Lock()
	c.confs = append(c.confs, conf)
	c.mu.Unlock()
	return conf
}

// answered waits until the broker has answered every Publish call so far.
func (c *countingPublisher) answered(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	confs := slices.Clone(c.confs)
	c.mu.Unlock()
	for _, conf := range confs {
		select {
		case <-conf.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("the broker did not answer a publish within 30 s")
		}
	}
}

// TestWindowCountsRowsAwaitingTheirPositionWrite: confirmed rows whose
// position write has not finished still count against the window, so
// however slow the write, at most a window of rows is published and not
// recorded: what a crash would publish again.
func TestWindowCountsRowsAwaitingTheirPositionWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "held", 100, 5)
	store := &heldRecords{Store: b.store, barrier: newBarrier(), renewed: make(chan struct{}, 100)}
	pub := &countingPublisher{Publisher: b.broker}
	// A lease of 1 s is renewed every 333 ms: each renewal is a turn of
	// the relay's loop.
	stop := run(t, relay.Config{BatchSize: 10, LeaseTimeout: time.Second}, store, pub)
	defer stop()
	release := sync.OnceFunc(func() { close(store.open) })
	defer release() // before stop, so a failed test leaves nothing held
	<-store.arrived // the first position write hangs from now on
	// The relay gets every chance to overrun: the window is published and
	// answered, the next batch is read and waiting, and the loop turns
	// twice more. Each turn publishes first when the window has room, and
	// the second renewal's turn begins after all of that.
	eventually(t, "the window of 20 published and the next batch read", func() bool {
		return pub.sent.Load() >= 20 && store.rowsRead.Load() >= 30
	})
	pub.answered(t)
	for len(store.renewed) > 0 {
		<-store.renewed
	}
	for range 2 {
		select {
		case <-store.renewed:
		case <-time.After(30 * time.Second):
			t.Fatal("the relay renewed no lease for 30 s")
		}
	}
	if n := pub.sent.Load(); n > 20 {
		t.Fatalf("%d messages published while the first position write hung, want at most the window of 20", n)
	}
	release()
	if seen := b.deliveredOf(t, 100, ""); len(seen) != 100 {
		t.Fatalf("%d delivered, want 100", len(seen))
	}
}
