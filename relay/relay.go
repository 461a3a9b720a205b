package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/retry"
)

// Relay moves committed outbox rows to the broker. Create it with New and
// call Run once.
type Relay struct {
	cfg   Config
	store Store
	pub   Publisher
	log   *slog.Logger
	pos   Position // recorded position
	// failing is the streak of failed rounds, until rows are recorded
	// again; it outlives a lease lost meanwhile, so the recovery is
	// reported whichever term of leadership it comes in.
	failing retry.Streak
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
// wrapping ErrPositionAhead or ErrNotSetUp if the store refuses to start
// (or, for ErrNotSetUp, refuses this replica later: the table was
// partitioned another way meanwhile).
//
// Run never returns because a server is down: it retries with capped,
// jittered backoff and logs once when it fails and once when it recovers.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.start(ctx); err != nil {
		return err
	}
	for {
		term, ok, err := r.acquire(ctx)
		if err != nil {
			return err
		}
		if !ok {
			r.log.Info("stopped", "position", r.pos.String())
			return nil
		}
		r.pos = term.pos
		err = r.lead(ctx, term)
		r.locks.flush(time.Now())
		if errors.Is(err, errHandedOver) {
			continue
		}
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
// term it leads in. It returns false when ctx ends first, and fails only
// with an error wrapping ErrNotSetUp: the store refuses this replica (its
// configuration no longer fits the table's).
func (r *Relay) acquire(ctx context.Context) (term, bool, error) {
	backoff := r.backoff()
	var failing retry.Streak
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
			return t, true, nil
		case ctx.Err() != nil:
		case errors.Is(err, ErrNotSetUp):
			return term{}, false, err
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
			if failing.Fail(err) {
				r.log.Warn("cannot take the lease; retrying", "err", err)
			}
			r.sleep(ctx, backoff.Next())
		}
	}
	return term{}, false, nil
}

// lead publishes while this replica holds the lease. It returns nil after a
// clean stop, ErrShutdownTimeout, or an error wrapping ErrLeaseLost once the
// lease is gone (nothing more is published then).
func (r *Relay) lead(ctx context.Context, t term) error {
	finish, cancel := drainContext(ctx, r.cfg.ShutdownTimeout)
	defer cancel()
	defer r.cfg.Observer.Leading(false)

	p := newPipeline(ctx, r.cfg, r.store, r.pub, t, r.unlocked)
	defer p.close()
	defer func() { r.pos = p.recorded }()
	backoff := r.backoff()
	for {
		err := p.step(ctx, finish)
		switch {
		case errors.Is(err, errStopped):
			r.release(ctx)
			r.log.Info("stopped", "position", p.recorded.String())
			return nil
		case errors.Is(err, errHandedOver):
			r.release(ctx)
			r.log.Info("handed over: released the lease to take this replica's new share", "position", p.recorded.String())
			return err
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
				r.log.Info("stopped after a failed round", "err", err, "position", p.recorded.String())
				return nil
			}
			if r.failing.Fail(err) {
				r.log.Warn("publishing failed; retrying", "err", err, "position", p.recorded.String())
			}
			r.cfg.Observer.Failed(failure(err))
			if h := r.cfg.Hooks.RoundFailed; h != nil {
				h(err)
			}
			r.sleep(ctx, backoff.Next())
		case p.progressed && r.failing.Failing():
			r.log.Info("publishing recovered", "position", p.recorded.String(), "failed_rounds", r.failing.Succeed())
			backoff.Reset()
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
	backoff := r.backoff()
	var failing retry.Streak
	for {
		r.cfg.Observer.Alive()
		pos, err := r.store.Start(ctx)
		if err == nil {
			r.pos = pos
			r.log.Info("started", "position", pos.String())
			return nil
		}
		if errors.Is(err, ErrPositionAhead) || errors.Is(err, ErrNotSetUp) {
			return err
		}
		if ctx.Err() != nil {
			return nil // stopped before starting: nothing in flight
		}
		if failing.Fail(err) {
			r.log.Warn("cannot start yet; retrying", "err", err)
		}
		r.sleep(ctx, backoff.Next())
	}
}

// backoff is the wait between attempts after a failure: capped,
// jittered, from RetryMin to RetryMax.
func (r *Relay) backoff() retry.Backoff {
	return retry.Backoff{Min: r.cfg.RetryMin, Max: r.cfg.RetryMax}
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
