package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Store is the outbox as the core sees it.
type Store interface {
	// Start prepares the store and returns the recorded position. It fails
	// with an error wrapping ErrPositionAhead when the recorded position or
	// the table's rows lie beyond the server's transaction counter.
	Start(ctx context.Context) (Position, error)
	// Read returns up to limit committed rows after the position, in
	// publishing order. It never returns a row while an older transaction
	// that could still commit a row before it is running.
	Read(ctx context.Context, after Position, limit int) ([]Row, error)
	// Record stores pos as the recorded position.
	Record(ctx context.Context, pos Position) error
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
}

// Confirmation is the broker's answer for one Publish call.
type Confirmation interface {
	// Done is closed when the answer is likely complete; Wait may still
	// block briefly for confirms that arrive out of order.
	Done() <-chan struct{}
	// Wait waits for every message to be confirmed, returned or nacked, or
	// for ctx. It returns how many leading messages the broker confirmed
	// without returning them; fewer than were sent come with the reason.
	Wait(ctx context.Context) (confirmed int, err error)
}

// ErrPositionAhead means the recorded position or rows of the outbox are
// ahead of the database's transaction counter, as after a restore or a
// logical copy to a new server. Reading on would skip rows, so the relay
// refuses to start.
var ErrPositionAhead = errors.New("outbox is ahead of the database's transaction counter")

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
}

// New returns a Relay, or the first configuration problem.
func New(cfg Config, store Store, pub Publisher) (*Relay, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Relay{cfg: cfg, store: store, pub: pub, log: cfg.Logger}, nil
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
	finish, cancel := drainContext(ctx, r.cfg.ShutdownTimeout)
	defer cancel()

	p := &pipeline{r: r, cursor: r.pos, readDue: true, idle: r.cfg.MinPoll}
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	var failing error
	for {
		err := p.step(ctx, finish)
		switch {
		case errors.Is(err, errStopped):
			r.log.Info("stopped", "position", r.pos.String())
			return nil
		case errors.Is(err, ErrShutdownTimeout):
			return err
		case err != nil:
			p.reset()
			if ctx.Err() != nil {
				// Stopping: what failed is simply still pending.
				r.log.Info("stopped after a failed round", "err", err, "position", r.pos.String())
				return nil
			}
			if failing == nil || failing.Error() != err.Error() {
				r.log.Warn("publishing failed; retrying", "err", err, "position", r.pos.String())
			}
			failing = err
			if h := r.cfg.Hooks.RoundFailed; h != nil {
				h(err)
			}
			r.sleep(ctx, retry.next())
		case p.progressed && failing != nil:
			r.log.Info("publishing recovered", "position", r.pos.String())
			failing = nil
			retry.reset()
		}
	}
}

// start reads the recorded position, retrying while the store is
// unreachable.
func (r *Relay) start(ctx context.Context) error {
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	for {
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
