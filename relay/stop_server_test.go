package relay_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// stalled never confirms, like a broker that stopped answering.
type stalled struct{ started chan struct{} }

func (s stalled) Publish(_ context.Context, msgs []relay.Message) relay.Confirmation {
	close(s.started)
	return stalledConfirmation{n: len(msgs)}
}

func (s stalled) Reset() {}

func (s stalled) Connect(context.Context) error { return nil }

func (s stalled) Blocked() (bool, <-chan struct{}) { return false, nil }

type stalledConfirmation struct{ n int }

func (stalledConfirmation) Done() <-chan struct{} { return nil }

func (c stalledConfirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	<-ctx.Done()
	return make([]relay.Answer, c.n), context.Cause(ctx)
}

func TestRelayShutdownGivesUpAfterTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 10, 1)
	pub := stalled{started: make(chan struct{})}
	stop := run(t, relay.Config{ShutdownTimeout: 200 * time.Millisecond}, b.store, pub)
	<-pub.started
	begun := time.Now()
	err := stop()
	if !errors.Is(err, relay.ErrShutdownTimeout) {
		t.Fatalf("Run = %v, want the unconfirmed round reported", err)
	}
	if waited := time.Since(begun); waited < 200*time.Millisecond {
		t.Fatalf("gave up after %s, before the shutdown timeout", waited)
	}
	st, err := b.store.Admin().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 10 {
		t.Fatalf("%d rows pending after an unconfirmed stop, want all 10", st.Pending)
	}
}

// gatedPublish holds the first Publish call until the test opens the gate,
// so a stop lands while a round is in flight.
type gatedPublish struct {
	relay.Publisher
	inFlight chan struct{} // closed when the first Publish call arrives
	gate     chan struct{} // the call goes on once this is closed
	once     sync.Once
}

func (g *gatedPublish) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	g.once.Do(func() {
		close(g.inFlight)
		<-g.gate
	})
	return g.Publisher.Publish(ctx, msgs)
}

func TestRelayStopFinishesTheRoundInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 50, 5)
	pub := &gatedPublish{Publisher: b.broker, inFlight: make(chan struct{}), gate: make(chan struct{})}
	r, err := relay.New(relay.Config{BatchSize: 50}, b.store, pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-pub.inFlight
	cancel() // the stop comes while the batch is being published
	close(pub.gate)
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	st, err := b.store.Admin().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 {
		t.Fatalf("%d rows pending after a clean stop mid-round, want 0", st.Pending)
	}
	// A restart publishes nothing again.
	stop := run(t, relay.Config{}, b.store, b.broker)
	b.write(t, "b", 1, 1)
	seen := b.delivered(t, 51)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if dups := duplicates(b.rest(t, seen)); dups != 0 {
		t.Fatalf("%d duplicates after a clean stop and restart", dups)
	}
}
