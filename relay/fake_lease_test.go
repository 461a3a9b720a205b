package relay_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// writing adds a row every millisecond until the test ends, so the relay
// is publishing whenever something happens to it.
func writing(f *fake) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f.store.Add(rows(3, 3)...)
			}
		}
	}()
}

// callCounter returns a hook that counts its calls, and the count.
func callCounter() (func(), *atomic.Int64) {
	var n atomic.Int64
	return func() { n.Add(1) }, &n
}

func TestFakeLeaderThatCannotRenewStopsBeforeATakeover(t *testing.T) {
	// A leader stops a quarter of the lease before its end, 75 ms here:
	// a stall longer than that between its last check and a Publish is
	// the margin the design accepts.
	f := newFake(t, relay.Config{BatchSize: 5, LeaseTimeout: 300 * time.Millisecond})
	lost, losses := callCounter()
	f.cfg.Hooks.LeaseLost = lost
	writing(f)
	f.run()
	f.until("rows flow", func() bool { return len(f.pub.Delivered()) > 100 })
	// Cut off from the database: no renewal, no new lease.
	f.store.Fail("Renew", errors.New("connection reset"))
	f.store.Fail("Acquire", errors.New("connection reset"))
	f.store.TakeLease() // once the lease ran out: the broker flags any publish after this
	f.store.Fail("Renew", nil)
	f.store.Fail("Acquire", nil)
	f.until("the relay stands by", func() bool { return losses.Load() > 0 })
	delivered := len(f.pub.Delivered())
	f.store.ReturnLease()
	f.until("it leads again and publishes", func() bool { return len(f.pub.Delivered()) > delivered+100 })
	f.cfg.Hooks.LeaseLost = nil
	inOrder(t, f.pub.Delivered())
}

func TestFakeLeaderStopsWhenTheStoreCannotVouchForTheLease(t *testing.T) {
	// Renewals keep succeeding: only the store's Lost channel can tell.
	f := newFake(t, relay.Config{BatchSize: 5})
	lost, losses := callCounter()
	f.cfg.Hooks.LeaseLost = lost
	writing(f)
	f.run()
	f.until("rows flow", func() bool { return len(f.pub.Delivered()) > 100 })
	f.store.LoseSession()
	f.until("the relay gives the lease up", func() bool { return losses.Load() > 0 })
	delivered := len(f.pub.Delivered())
	f.until("it leads again and publishes", func() bool { return len(f.pub.Delivered()) > delivered+100 })
	inOrder(t, f.pub.Delivered())
}

func TestFakeBlockedBrokerGetsNothing(t *testing.T) {
	// A blocked relay turns at each renewal: every 33 ms here.
	f := newFake(t, relay.Config{BatchSize: 5, LeaseTimeout: 100 * time.Millisecond})
	added := f.store.Add(rows(50, 5)...)
	f.pub.Block(true) // a Publish while blocked is a violation
	f.run()
	f.until("the relay reports the block", f.obs.isBlocked)
	turns := f.obs.turns()
	f.until("the relay has turned a few times since", func() bool { return f.obs.turns() > turns+2 })
	if n := len(f.pub.Sent()); n != 0 {
		t.Fatalf("sent %d messages while the broker blocks publishers", n)
	}
	f.pub.Block(false)
	f.drained()
	once(t, f.pub.Delivered(), idsOf(added))
	if f.obs.isBlocked() {
		t.Error("the relay still reports the broker blocked")
	}
}

func TestFakeStopRecordsWhatWasConfirmed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		confirm bool
		want    error
	}{
		{"confirms come", true, nil},
		{"confirms never come", false, relay.ErrShutdownTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, relay.Config{BatchSize: 5, ShutdownTimeout: 50 * time.Millisecond})
			f.store.Add(rows(50, 5)...)
			f.pub.Hold()
			f.run()
			f.until("the window is out", func() bool { now, _ := f.pub.InFlight(); return now == f.cfg.Window() })
			stopped := make(chan error, 1)
			go func() { stopped <- f.halt() }()
			if tc.confirm {
				f.until("the relay stops reading", func() bool { return f.obs.turns() > 0 })
				f.pub.Release()
			}
			if err := <-stopped; !errors.Is(err, tc.want) {
				t.Fatalf("Run returned %v, want %v", err, tc.want)
			}
			sent := f.pub.Sent()
			last := f.store.Rows()[len(sent)-1].Position()
			switch pos := f.store.Position(); {
			case tc.confirm && pos != last:
				t.Errorf("recorded %s at the stop, want the last row confirmed, %s", pos, last)
			case !tc.confirm && pos != (relay.Position{}):
				t.Errorf("recorded %s at the stop, though nothing was confirmed", pos)
			}
			f.pub.Release()
		})
	}
}

func TestFakeHandOverFinishesWhatIsInFlight(t *testing.T) {
	// The store asks for a hand-over while confirms are held back: the
	// relay publishes nothing more, keeps its lease until every message in
	// flight is confirmed and recorded, then releases it and takes its new
	// share; nothing is sent twice.
	f := newFake(t, relay.Config{BatchSize: 5, LeaseTimeout: 300 * time.Millisecond})
	added := f.store.Add(rows(200, 7)...)
	f.pub.Hold()
	f.run()
	f.until("a window is in flight", func() bool { return len(f.pub.Sent()) > 0 })
	f.store.HandOver()
	f.until("a renewal asked for the hand-over", func() bool { _, _, pending := f.store.Releases(); return !pending })
	sent := len(f.pub.Sent())
	_, renewed, _ := f.store.Releases()
	// A renewal later, the hand-over is under way: nothing more went out,
	// and the lease is still held, since confirms are pending.
	f.until("another renewal", func() bool { _, n, _ := f.store.Releases(); return n > renewed })
	if n, r := len(f.pub.Sent()), released(f); n != sent || r != 0 {
		t.Fatalf("handing over with confirms pending: %d messages sent (%d before), %d releases; want none more, and the lease kept",
			n, sent, r)
	}
	f.pub.Release()
	f.until("the relay released and leads again", func() bool { return released(f) == 1 && f.store.Leader() })
	f.drained()
	once(t, f.pub.Delivered(), idsOf(added))
	inOrder(t, f.pub.Delivered())
}

// released is how many times the relay released the lease.
func released(f *fake) int {
	n, _, _ := f.store.Releases()
	return n
}
