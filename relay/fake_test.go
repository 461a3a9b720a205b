package relay_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/relaytest"
)

// The TestFake tests run the core against the in-memory fakes of
// relaytest: no server, a few milliseconds each, the same answers every
// run. `go test ./relay/ -run Fake` runs them alone.

// fake is a relay running on a fake store and broker.
type fake struct {
	t     *testing.T
	store *relaytest.Store
	pub   *relaytest.Publisher
	cfg   relay.Config
	obs   *watch
	done  chan error
	stop  context.CancelFunc
}

// fastConfig sets the fields of cfg left zero to values that keep a fake
// test within milliseconds.
func fastConfig(cfg relay.Config) relay.Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&cfg.PollInterval, 5*time.Millisecond)
	set(&cfg.MinPoll, time.Millisecond)
	set(&cfg.Linger, time.Millisecond)
	set(&cfg.RetryMin, time.Millisecond)
	set(&cfg.RetryMax, 5*time.Millisecond)
	set(&cfg.ParkRetryMin, 10*time.Millisecond)
	set(&cfg.ParkRetryMax, 20*time.Millisecond)
	set(&cfg.LeaseTimeout, 300*time.Millisecond)
	set(&cfg.ShutdownTimeout, time.Second)
	return cfg
}

// newFake returns a relay on fresh fakes, not yet running. The store
// checks that every recorded position covers only rows the broker
// confirmed or that were parked; the broker, that nothing is published
// without the lease.
func newFake(t *testing.T, cfg relay.Config) *fake {
	t.Helper()
	f := &fake{t: t, store: relaytest.NewStore(), pub: relaytest.NewPublisher(), cfg: fastConfig(cfg), obs: newWatch()}
	if f.cfg.Observer == nil {
		f.cfg.Observer = f.obs
	}
	f.store.LeaseTimeout(f.cfg.LeaseTimeout)
	f.store.Accept(func(r relay.Row) bool { return f.pub.Confirmed(r.EventID) })
	f.pub.May(func() error {
		if !f.store.Leader() {
			return errors.New("this replica does not hold the lease")
		}
		return nil
	})
	return f
}

// run starts the relay; the test's cleanup stops it and checks the fakes
// saw no violation of their contracts.
func (f *fake) run() {
	f.t.Helper()
	rl, err := relay.New(f.cfg, f.store, f.pub)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.stop, f.done = cancel, make(chan error, 1)
	go func() { f.done <- rl.Run(ctx) }()
	f.t.Cleanup(func() {
		if err := f.halt(); err != nil {
			f.t.Errorf("Run: %v", err)
		}
		for _, p := range append(f.store.Problems(), f.pub.Problems()...) {
			f.t.Error(p)
		}
	})
}

// halt stops the relay and returns what Run returned.
func (f *fake) halt() error {
	if f.stop == nil {
		return nil
	}
	f.stop()
	f.stop = nil
	return <-f.done
}

// until waits for cond, re-checking it at every change of the fakes, and
// fails the test if it does not hold within 5 s.
func (f *fake) until(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		s, p, o := f.store.Changed(), f.pub.Changed(), f.obs.changed()
		if cond() {
			return
		}
		select {
		case <-s:
		case <-p:
		case <-o:
		case <-deadline:
			f.t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// drained waits until the recorded position covers the last row.
func (f *fake) drained() {
	f.t.Helper()
	rows := f.store.Rows()
	last := rows[len(rows)-1].Position()
	f.until("the position reaches "+last.String(), func() bool { return f.store.Position() == last })
}

// rows returns n rows spread round-robin over aggs aggregates.
func rows(n, aggs int) []relay.Row {
	out := make([]relay.Row, n)
	for i := range out {
		out[i] = relay.Row{AggregateType: "order", AggregateID: fmt.Sprint(i % aggs), EventType: "e"}
	}
	return out
}

// ids returns the outbox ids of messages, in order.
func ids(msgs []relay.Message) []int64 {
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Headers["outbox_id"].(int64)
	}
	return out
}

// inOrder checks that each aggregate's messages were first confirmed in
// the order of its rows: a repeat may come later, never a newer row
// before an older one.
func inOrder(t *testing.T, delivered []relay.Message) {
	t.Helper()
	last := map[relay.Aggregate]int64{}
	seen := map[int64]bool{}
	for _, m := range delivered {
		id := m.Headers["outbox_id"].(int64)
		if seen[id] {
			continue
		}
		seen[id] = true
		if id < last[m.Aggregate] {
			t.Errorf("aggregate %v: row %d was first delivered after row %d", m.Aggregate, id, last[m.Aggregate])
		}
		last[m.Aggregate] = id
	}
}

// once checks that every row of want was delivered exactly once.
func once(t *testing.T, delivered []relay.Message, want []int64) {
	t.Helper()
	got := ids(delivered)
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("delivered rows %v, want each of %v once", short(got), short(want))
	}
}

// idsOf returns the ids of rows.
func idsOf(rows []relay.Row) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

// short prints a long list of ids by its ends.
func short(ids []int64) string {
	if len(ids) <= 12 {
		return fmt.Sprint(ids)
	}
	return fmt.Sprintf("%v … %v (%d)", ids[:6], ids[len(ids)-6:], len(ids))
}

// header returns the message's header key as text.
func header(m relay.Message, key string) string {
	v, _ := m.Headers[key].(string)
	return strings.TrimSpace(v)
}

// watch is a relay.Observer that counts what the relay reports and signals
// every report, so a test waits on the relay's own account of itself.
type watch struct {
	mu      sync.Mutex
	alive   int
	blocked bool
	failed  map[relay.Failure]int
	signal  chan struct{}
}

func newWatch() *watch { return &watch{failed: map[relay.Failure]int{}, signal: make(chan struct{})} }

func (w *watch) changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.signal
}

func (w *watch) report(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
	close(w.signal)
	w.signal = make(chan struct{})
}

// turns returns how many turns the relay's loops made.
func (w *watch) turns() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.alive
}

func (w *watch) isBlocked() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.blocked
}

func (w *watch) Alive()                       { w.report(func() { w.alive++ }) }
func (w *watch) Leading(bool)                 {}
func (w *watch) Sent(int)                     {}
func (w *watch) Confirmed(int, time.Duration) {}
func (w *watch) Failed(r relay.Failure)       { w.report(func() { w.failed[r]++ }) }
func (w *watch) Blocked(b bool)               { w.report(func() { w.blocked = b }) }
func (w *watch) Unlocked(int)                 {}
func (w *watch) Skipped(int)                  {}
