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

// slowConfirm delays the broker's answer so a stop lands mid-round.
type slowConfirm struct {
	relay.Publisher
	inFlight chan struct{}
	once     sync.Once
}

func (s *slowConfirm) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	s.once.Do(func() { close(s.inFlight) })
	time.Sleep(100 * time.Millisecond)
	return s.Publisher.Publish(ctx, msgs)
}

func TestRelayStopFinishesTheRoundInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 50, 5)
	pub := &slowConfirm{Publisher: b.broker, inFlight: make(chan struct{})}
	stop := run(t, relay.Config{BatchSize: 50}, b.store, pub)
	<-pub.inFlight
	if err := stop(); err != nil {
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
	stop = run(t, relay.Config{}, b.store, b.broker)
	b.write(t, "b", 1, 1)
	seen := b.delivered(t, 51)
	if dups := duplicates(seen); dups != 0 {
		t.Fatalf("%d duplicates after a clean stop and restart", dups)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
