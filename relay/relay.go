package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Store is the outbox as the core sees it.
type Store interface {
	// Start prepares the store and returns the recorded position. It fails
	// with an error wrapping ErrPositionAhead when the recorded position or
	// the table's rows lie beyond the server's transaction counter.
	Start(ctx context.Context) (Position, error)
	// Read returns committed rows after the position, in publishing
	// order, within the bounds of b. It never returns a row while an older
	// transaction that could still commit a row before it is running.
	Read(ctx context.Context, after Position, b Batch) ([]Row, error)
	// Acquire takes the lease that makes this replica the one publisher of
	// the table, and returns the recorded position. It fails with an error
	// wrapping ErrLeaseHeld while another replica holds the lease.
	Acquire(ctx context.Context) (Position, error)
	// Renew extends the lease by the lease timeout and records state (what
	// the leader is doing, for status). It fails with ErrLeaseLost if
	// another replica took the lease.
	Renew(ctx context.Context, state string) error
	// Release gives the lease up (at a clean stop).
	Release(ctx context.Context) error
	// Lost returns a channel closed when this replica can no longer
	// vouch for the lease it took last, before the lease runs out (the
	// session that proves it alive ended): a leader stops publishing at
	// once, since another replica may take over.
	Lost() <-chan struct{}
	// Record stores pos as the recorded position. It fails with
	// ErrLeaseLost if another replica took the lease: the write is fenced.
	Record(ctx context.Context, pos Position) error
	Parking
}

// Publisher sends messages to the broker with publisher confirms.
type Publisher interface {
	// Publish sends msgs in order, after every message of earlier calls,
	// and returns without waiting for the broker. The Confirmation reports
	// the outcome; a failure to send is reported there too.
	Publish(ctx context.Context, msgs []Message) Confirmation
	// Reset abandons everything in flight: Confirmations not yet waited
	// for become meaningless and the next Publish starts afresh (a new
	// channel). The core calls it after any failure, before publishing
	// again from the recorded position.
	Reset()
	// Connect opens the connection if none is open, so that a leader
	// with nothing to publish still notices a broker that is down. The
	// core calls it whenever a read finds the outbox drained.
	Connect(ctx context.Context) error
	// Blocked reports whether the broker blocks publishers now (a
	// resource alarm) and returns a channel closed at the next change.
	// The core publishes and reads nothing while it is blocked.
	Blocked() (blocked bool, change <-chan struct{})
}

// Confirmation is the broker's answer for one Publish call.
type Confirmation interface {
	// Done is closed when the answer is likely complete; Wait may still
	// block briefly for confirms that arrive out of order.
	Done() <-chan struct{}
	// Wait waits for the broker's answer to every message, or for ctx. It
	// returns one Answer per message given to Publish, in order. Messages
	// that are neither confirmed nor refused are in doubt (a closed
	// channel or connection, a failure to send, ctx); err says why, and
	// the core sends them again.
	Wait(ctx context.Context) (answers []Answer, err error)
}

// Answer is the broker's answer for one message.
type Answer struct {
	// Confirmed: the broker took responsibility for the message.
	Confirmed bool
	// Refused, when set, is why the broker refused this message alone
	// (returned as unroutable, nacked on a live channel), or why it cannot
	// be sent at all; the other messages of the call are not affected. It
	// wraps ErrRejected, and ErrInvalid too when no retry can help.
	Refused error
}

// inDoubt reports whether the broker gave the message no answer.
func (a Answer) inDoubt() bool { return !a.Confirmed && a.Refused == nil }

// Leading returns how many leading answers are confirmed, and the refusal
// of the first that is not, if the broker refused it (nil if in doubt).
func Leading(answers []Answer) (int, error) {
	for i, a := range answers {
		if !a.Confirmed {
			return i, a.Refused
		}
	}
	return len(answers), nil
}

// ErrPositionAhead means the recorded position or rows of the outbox are
// ahead of the database's transaction counter, as after a restore or a
// logical copy to a new server. Reading on would skip rows, so the relay
// refuses to start.
var ErrPositionAhead = errors.New("outbox is ahead of the database's transaction counter")

// ErrLeaseHeld means another replica holds the lease: this one stands by.
var ErrLeaseHeld = errors.New("lease held")

// ErrNameInUse means another live replica has this replica's name: this
// one does not lead until it is gone.
var ErrNameInUse = errors.New("replica name in use")

// ErrLeaseLost means this replica no longer holds the lease: it stops
// publishing and stands by.
var ErrLeaseLost = errors.New("lease lost to another replica")

// ErrShutdownTimeout means Run stopped before every message in flight was
// confirmed and recorded: those rows will be published again at the next
// start.
var ErrShutdownTimeout = errors.New("shutdown timeout: stopped before every message in flight was confirmed and recorded")

// Relay moves committed outbox rows to the broker. Create it with New and
// call Run once.
type Relay struct {
	cfg   Config
	store Store
	pub   Publisher
	log   *slog.Logger
	pos   Position // recorded position
	// failing is the last failure of publishing, until rows are recorded
	// again; it outlives a lease lost meanwhile, so the recovery is
	// reported whichever term of leadership it comes in.
	failing error
	locks   lockReport // rows published without their ordering lock
}

// New returns a Relay, or the first configuration problem.
func New(cfg Config, store Store, pub Publisher) (*Relay, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Relay{cfg: cfg, store: store, pub: pub, log: cfg.Logger,
		locks: lockReport{log: cfg.Logger, quiet: cfg.LockCheck == LockCheckCount}}, nil
}

// unlocked reports the rows among rows, just recorded as published, whose
// transaction did not take their aggregate's ordering lock.
func (r *Relay) unlocked(rows []Row, now time.Time) {
	if n := r.locks.add(rows, now); n > 0 {
		r.cfg.Observer.Unlocked(n)
	}
}

// Run publishes until ctx is cancelled, then stops reading and waits up to
// ShutdownTimeout for the confirms of messages in flight, records them and
// returns nil, so a clean stop leaves nothing to publish twice. It returns
// ErrShutdownTimeout if the confirms did not come in time, or an error
// wrapping ErrPositionAhead if the store refuses to start.
//
// Run never returns because a server is down: it retries with capped,
// jittered backoff and logs once when it fails and once when it recovers.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.start(ctx); err != nil {
		return err
	}
	for {
		term, ok := r.acquire(ctx)
		if !ok {
			r.log.Info("stopped", "position", r.pos.String())
			return nil
		}
		r.pos = term.pos
		err := r.lead(ctx, term)
		r.locks.flush(time.Now())
		if !errors.Is(err, ErrLeaseLost) {
			return err
		}
		r.log.Warn("lost the lease: stopped publishing, standing by", "position", r.pos.String())
		if h := r.cfg.Hooks.LeaseLost; h != nil {
			h()
		}
	}
}

// term is what a replica starts leading with: the position to publish
// from, the local time until which the lease is surely valid, the
// aggregates held back by parked rows, the rows aggregates went on without
// that no message has named yet, and the store's signal that the lease can
// no longer be vouched for.
type term struct {
	pos      Position
	deadline time.Time
	parked   []Aggregate
	gaps     map[Aggregate][]Skipped
	lost     <-chan struct{}
}

// acquire stands by until this replica holds the lease, and returns the
// term it leads in. It returns false when ctx ends first.
func (r *Relay) acquire(ctx context.Context) (term, bool) {
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	var waiting string
	for ctx.Err() == nil {
		r.cfg.Observer.Alive()
		t0 := time.Now()
		t := term{deadline: t0.Add(r.cfg.leaseValid())}
		var err error
		t.pos, err = r.store.Acquire(ctx)
		if err == nil {
			t.lost = r.store.Lost()
			t.parked, err = r.store.ParkedAggregates(ctx, r.cfg.DeadRows)
		}
		if err == nil {
			t.gaps, err = r.store.Skipped(ctx, r.cfg.DeadRows)
		}
		switch {
		case err == nil:
			r.log.Info("leading: took the lease", "position", t.pos.String(), "parked_aggregates", len(t.parked))
			r.cfg.Observer.Leading(true)
			if h := r.cfg.Hooks.Leading; h != nil {
				h()
			}
			return t, true
		case ctx.Err() != nil:
		case errors.Is(err, ErrNameInUse):
			if waiting != err.Error() {
				r.log.Error("not leading: another running replica has this one's name", "err", err)
			}
			waiting = err.Error()
			r.sleep(ctx, r.cfg.LeaseTimeout/4+rand.N(r.cfg.LeaseTimeout/8+1))
		case errors.Is(err, ErrLeaseHeld):
			if waiting == "" {
				r.log.Info("standing by: another replica leads", "lease", err)
			}
			waiting = err.Error()
			r.sleep(ctx, r.cfg.LeaseTimeout/4+rand.N(r.cfg.LeaseTimeout/8+1))
		default:
			r.log.Warn("cannot take the lease; retrying", "err", err)
			r.sleep(ctx, retry.next())
		}
	}
	return term{}, false
}

// lead publishes while this replica holds the lease. It returns nil after a
// clean stop, ErrShutdownTimeout, or an error wrapping ErrLeaseLost once the
// lease is gone (nothing more is published then).
func (r *Relay) lead(ctx context.Context, t term) error {
	finish, cancel := drainContext(ctx, r.cfg.ShutdownTimeout)
	defer cancel()
	defer r.cfg.Observer.Leading(false)

	gaps := t.gaps
	if gaps == nil {
		gaps = map[Aggregate][]Skipped{}
	}
	p := &pipeline{r: r, cursor: r.pos, readDue: true, idle: r.cfg.MinPoll, deadline: t.deadline, lost: t.lost,
		renew: time.NewTimer(r.cfg.renewEvery()), retry: time.NewTimer(0), parked: map[Aggregate]bool{}, confirmed: map[Position]bool{},
		gaps:     gaps,
		naming:   map[Aggregate][]Skipped{},
		writeCtx: context.WithoutCancel(ctx)}
	defer p.renew.Stop()
	defer p.retry.Stop()
	defer p.stopRead()
	defer func() {
		if p.paused { // the next term of leadership starts unpaused
			r.cfg.Observer.Blocked(false)
		}
	}()
	for _, a := range t.parked {
		p.parked[a] = true
	}
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	for {
		err := p.step(ctx, finish)
		switch {
		case errors.Is(err, errStopped):
			r.release(ctx)
			r.log.Info("stopped", "position", r.pos.String())
			return nil
		case errors.Is(err, ErrShutdownTimeout):
			p.settle() // what was confirmed is worth recording
			return err
		case errors.Is(err, ErrLeaseLost):
			p.reset()
			r.cfg.Observer.Failed(FailureLease)
			return err
		case err != nil:
			p.reset()
			if ctx.Err() != nil {
				// Stopping: what failed is simply still pending.
				r.release(ctx)
				r.log.Info("stopped after a failed round", "err", err, "position", r.pos.String())
				return nil
			}
			if r.failing == nil || r.failing.Error() != err.Error() {
				r.log.Warn("publishing failed; retrying", "err", err, "position", r.pos.String())
			}
			r.failing = err
			r.cfg.Observer.Failed(failure(err))
			if h := r.cfg.Hooks.RoundFailed; h != nil {
				h(err)
			}
			r.sleep(ctx, retry.next())
		case p.progressed && r.failing != nil:
			r.log.Info("publishing recovered", "position", r.pos.String())
			r.failing = nil
			retry.reset()
		}
	}
}

// release gives the lease up at a stop, so a standby takes over at once.
func (r *Relay) release(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := r.store.Release(rctx); err != nil {
		r.log.Warn("could not release the lease; a standby takes over when it lapses", "err", err)
	}
}

// start reads the recorded position, retrying while the store is
// unreachable.
func (r *Relay) start(ctx context.Context) error {
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	for {
		r.cfg.Observer.Alive()
		pos, err := r.store.Start(ctx)
		if err == nil {
			r.pos = pos
			r.log.Info("started", "position", pos.String())
			return nil
		}
		if errors.Is(err, ErrPositionAhead) {
			return err
		}
		if ctx.Err() != nil {
			return nil // stopped before starting: nothing in flight
		}
		r.log.Warn("cannot start yet; retrying", "err", err)
		r.sleep(ctx, retry.next())
	}
}

func (r *Relay) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// drainContext returns a context that outlives parent by timeout: it is
// cancelled with cause ErrShutdownTimeout timeout after parent is done, or
// when cancel is called.
func drainContext(parent context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() {
		t := time.AfterFunc(timeout, func() { cancel(ErrShutdownTimeout) })
		context.AfterFunc(ctx, func() { t.Stop() })
	})
	return ctx, func() {
		stop()
		cancel(nil)
	}
}

// errorf wraps err, keeping ErrShutdownTimeout visible when it caused it.
func errorf(ctx context.Context, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if cause := context.Cause(ctx); errors.Is(cause, ErrShutdownTimeout) {
		return fmt.Errorf("%w: %w", cause, err)
	}
	return err
}
