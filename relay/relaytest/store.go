// Package relaytest has in-memory fakes of the core's ports, relay.Store and
// relay.Publisher, for fast deterministic tests of the core's rules: the
// window, the probe after a failure, parking and the dead-row policies.
// They keep the ports' contracts as the real adapters do, and check the
// core against them as it runs: a Record that covers a row the broker never
// confirmed, or a Publish while the lease is lost or the broker blocks, is
// a violation the test reads afterwards.
package relaytest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Store is an in-memory relay.Store: an outbox whose rows are committed as
// they are added, the recorded position, parked rows and the lease. The
// zero value is not usable; call NewStore.
type Store struct {
	watched
	rows     []relay.Row // in publishing order
	pos      relay.Position
	parked   []*entry // in publishing order
	leader   bool
	taken    bool          // another replica took the lease
	timeout  time.Duration // the lease's length
	until    time.Time     // when the lease ends unless renewed
	lost     chan struct{} // closed when the session is lost
	fail     map[string]error
	accepted func(relay.Row) bool
	handOver bool // the next Renew asks for a hand-over
	renewals int
	releases int
}

// entry is a parked row.
type entry struct {
	row      relay.Row
	attempts int
	reason   string
	due      time.Time
	dead     bool
	dropped  bool
	reported bool // its aggregate's next message named it
}

// NewStore returns an empty outbox.
func NewStore() *Store {
	return &Store{watched: newWatched(), lost: make(chan struct{}), fail: map[string]error{}}
}

// Add commits rows, in order, each in a transaction of its own after every
// row added before. Zero IDs, event ids, routing keys and payloads are
// filled in. It returns the rows as stored.
func (s *Store) Add(rows ...relay.Row) []relay.Row {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rows {
		last := relay.Position{}
		if n := len(s.rows); n > 0 {
			last = s.rows[n-1].Position()
		}
		r.ID, r.TxID = last.ID+1, last.TxID+1
		if r.EventID == "" {
			r.EventID = fmt.Sprintf("00000000-0000-4000-8000-%012d", r.ID)
		}
		if r.RoutingKey == "" {
			r.RoutingKey = "test"
		}
		if r.Payload == nil && r.PayloadSize == 0 {
			r.Payload = []byte(fmt.Sprintf(`{"n":%d}`, r.ID))
		}
		r.PayloadSize = max(r.PayloadSize, len(r.Payload))
		r.Lock = relay.LockHeld
		s.rows = append(s.rows, r)
	}
	s.changedLocked()
	return slices.Clone(s.rows[len(s.rows)-len(rows):])
}

// Rows returns every row of the outbox.
func (s *Store) Rows() []relay.Row {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rows)
}

// Fail makes the store's calls of op ("Read", "Record", "Renew", ...) fail
// with err until Fail(op, nil).
func (s *Store) Fail(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.fail, op)
	} else {
		s.fail[op] = err
	}
}

// Accept sets the check every recorded position must pass: every row at or
// before it must be accepted (confirmed by the broker) or parked. accepted
// runs with the store locked: it must not call the Store.
func (s *Store) Accept(accepted func(relay.Row) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted = accepted
}

// Position returns the recorded position.
func (s *Store) Position() relay.Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// failing returns the failure set for op.
func (s *Store) failing(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.fail[op]
}

// LeaseTimeout sets how long the lease lasts without renewal, as the real
// store's clock sees it; TakeLease waits for it to run out.
func (s *Store) LeaseTimeout(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timeout = d
}

// TakeLease waits until the lease runs out, as a standby does, and takes
// it for another replica: this one's renewals and fenced writes fail with
// relay.ErrLeaseLost, and Acquire with relay.ErrLeaseHeld, until
// ReturnLease.
func (s *Store) TakeLease() {
	for {
		s.mu.Lock()
		wait := time.Until(s.until)
		if wait <= 0 {
			s.taken, s.leader = true, false
			s.changedLocked()
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		time.Sleep(wait) // the lease's own clock, not a test's guess
	}
}

// ReturnLease lets this replica take the lease again.
func (s *Store) ReturnLease() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taken = false
	s.changedLocked()
}

// LoseSession closes the channel Lost returned: the store can no longer
// vouch for the lease, as when the database session behind it ends.
func (s *Store) LoseSession() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.lost)
	s.lost = make(chan struct{})
	s.changedLocked()
}

// HandOver makes the next renewal succeed with relay.ErrHandOver, as a
// store whose replicas share the work does when this one's share changes.
func (s *Store) HandOver() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handOver = true
}

// Releases returns how many times the relay released the lease, and
// renewed it; whether a hand-over asked for is still to be answered.
func (s *Store) Releases() (releases, renewals int, handOverPending bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.releases, s.renewals, s.handOver
}

// Leader reports whether this replica holds the lease: it took it, and no
// other replica took it since.
func (s *Store) Leader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader && !s.taken
}

// Start implements relay.Store.
func (s *Store) Start(ctx context.Context) (relay.Position, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos, s.failing(ctx, "Start")
}

// Read implements relay.Store.
func (s *Store) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing(ctx, "Read"); err != nil {
		return nil, err
	}
	i, _ := slices.BinarySearchFunc(s.rows, after, func(r relay.Row, p relay.Position) int {
		if r.Position().After(p) {
			return 1
		}
		if p.After(r.Position()) {
			return -1
		}
		return 0
	})
	var out []relay.Row
	bytes := 0
	for ; i < len(s.rows) && (b.Rows == 0 || len(out) < b.Rows); i++ {
		r := s.rows[i]
		if !r.Position().After(after) {
			continue
		}
		r = bounded(r, b.MaxPayload)
		if bytes += len(r.Payload) + len(r.Headers); len(out) > 0 && b.Bytes > 0 && bytes > b.Bytes {
			break
		}
		out = append(out, r)
	}
	return out, nil
}

// bounded leaves out a payload larger than maxPayload, as the real store
// does: its size is told, its bytes are not loaded.
func bounded(r relay.Row, maxPayload int) relay.Row {
	if maxPayload > 0 && r.PayloadSize > maxPayload {
		r.Payload = nil
	}
	return r
}

// Acquire implements relay.Store.
func (s *Store) Acquire(ctx context.Context) (relay.Position, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing(ctx, "Acquire"); err != nil {
		return relay.Position{}, err
	}
	if s.taken {
		return relay.Position{}, fmt.Errorf("%w by another replica", relay.ErrLeaseHeld)
	}
	s.leader = true
	s.until = time.Now().Add(s.timeout)
	s.changedLocked()
	return s.pos, nil
}

// Renew implements relay.Store.
func (s *Store) Renew(ctx context.Context, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, "Renew"); err != nil {
		return err
	}
	s.until = time.Now().Add(s.timeout)
	s.renewals++
	if s.handOver {
		s.handOver = false
		return relay.ErrHandOver
	}
	return nil
}

// fenced fails a write once the lease is gone.
func (s *Store) fenced(ctx context.Context, op string) error {
	if err := s.failing(ctx, op); err != nil {
		return err
	}
	if s.taken {
		return relay.ErrLeaseLost
	}
	return nil
}

// Release implements relay.Store.
func (s *Store) Release(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leader = false
	s.releases++
	s.changedLocked()
	return nil
}

// Lost implements relay.Store.
func (s *Store) Lost() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

// Record implements relay.Store.
func (s *Store) Record(ctx context.Context, pos relay.Position) error {
	return s.RecordParked(ctx, pos, nil, nil)
}

// record moves the recorded position, checking it against the contract.
func (s *Store) record(pos relay.Position) {
	if s.pos.After(pos) {
		s.problemf("recorded %s after %s: the position went back", pos, s.pos)
	}
	for _, r := range s.rows {
		p := r.Position()
		if !p.After(s.pos) || p.After(pos) {
			continue
		}
		if s.find(r.ID) == nil && s.accepted != nil && !s.accepted(r) {
			s.problemf("recorded %s, past row %d, which the broker did not confirm and was not parked", pos, r.ID)
		}
	}
	s.pos = pos
}
