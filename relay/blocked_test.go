package relay_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// alarmed is a broker whose resource alarm the test raises and lifts. It
// holds every confirm back until released, as a broker that stopped
// reading from the connection does.
type alarmed struct {
	*countingPublisher
	released chan struct{}
	release  func() // closes released, once

	mu     sync.Mutex
	on     bool
	change chan struct{}
}

func newAlarmed(pub relay.Publisher) *alarmed {
	released := make(chan struct{})
	return &alarmed{
		countingPublisher: &countingPublisher{Publisher: pub},
		released:          released,
		release:           sync.OnceFunc(func() { close(released) }),
		change:            make(chan struct{}),
	}
}

func (a *alarmed) Blocked() (bool, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.on, a.change
}

func (a *alarmed) set(on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.on = on
	close(a.change)
	a.change = make(chan struct{})
}

func (a *alarmed) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	c := a.countingPublisher.Publish(ctx, msgs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-a.released:
		case <-ctx.Done():
			return
		}
		select {
		case <-c.Done():
		case <-ctx.Done():
		}
	}()
	return heldConfirmation{Confirmation: c, n: len(msgs), released: a.released, done: done}
}

type heldConfirmation struct {
	relay.Confirmation
	n        int // messages
	released <-chan struct{}
	done     chan struct{}
}

func (c heldConfirmation) Done() <-chan struct{} { return c.done }

func (c heldConfirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	select {
	case <-c.released:
	case <-ctx.Done():
		return make([]relay.Answer, c.n), context.Cause(ctx)
	}
	return c.Confirmation.Wait(ctx)
}

// blockedObserver passes on what the relay says of the broker's alarm.
type blockedObserver struct {
	*counting
	blocked chan bool
}

func (o blockedObserver) Blocked(b bool) { o.blocked <- b }

// TestPausesWhenTheBrokerBlocksAFullWindow: a broker under a resource
// alarm stops confirming, so the window can be full when the alarm comes.
// The relay still says it paused, and resumes when the alarm is lifted.
func TestPausesWhenTheBrokerBlocksAFullWindow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "alarm", 40, 4)
	pub := newAlarmed(b.broker)
	obs := blockedObserver{counting: &counting{}, blocked: make(chan bool, 10)}
	stop := run(t, relay.Config{BatchSize: 10, Observer: obs}, b.store, pub)
	defer stop()
	defer pub.release() // before stop, so a failed test leaves nothing held

	eventually(t, "the window of 20 published", func() bool { return pub.sent.Load() >= 20 })
	pub.set(true)
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-obs.blocked:
			if got != want {
				t.Fatalf("observer told blocked=%v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("observer never told blocked=%v", want)
		}
	}
	expect(true)
	pub.set(false)
	pub.release()
	expect(false)
	if seen := b.deliveredOf(t, 40, ""); len(seen) != 40 {
		t.Fatalf("%d delivered, want 40", len(seen))
	}
}

// TestLeavingLeadershipEndsThePause: a replica that stops leading while
// paused does not go on reporting the broker as blocking; the next term
// finds out afresh.
func TestLeavingLeadershipEndsThePause(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newAlarmed(b.broker)
	defer pub.release()
	pub.set(true)
	obs := blockedObserver{counting: &counting{}, blocked: make(chan bool, 10)}
	stop := run(t, relay.Config{Observer: obs}, b.store, pub)
	select {
	case got := <-obs.blocked:
		if !got {
			t.Fatal("observer told blocked=false first")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("observer never told blocked=true")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-obs.blocked:
		if got {
			t.Fatal("observer told blocked=true again")
		}
	default:
		t.Fatal("the relay stopped leading and still reports the broker as blocking")
	}
}
