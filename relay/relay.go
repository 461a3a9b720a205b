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
	// Publish sends msgs in order on one channel and waits until each is
	// confirmed, returned or nacked, or ctx ends. It returns how many of
	// the leading messages the broker confirmed without returning them; a
	// result below len(msgs) comes with the reason.
	Publish(ctx context.Context, msgs []Message) (confirmed int, err error)
}

// ErrShutdownTimeout means Run stopped before the round in flight was
// confirmed and recorded: its rows will be published again at the next
// start.
var ErrShutdownTimeout = errors.New("shutdown timeout: stopped before the round in flight was confirmed and recorded")

// ErrPositionAhead means the recorded position or rows of the outbox are
// ahead of the database's transaction counter, as after a restore or a
// logical copy to a new server. Reading on would skip rows, so the relay
// refuses to start.
var ErrPositionAhead = errors.New("outbox is ahead of the database's transaction counter")

// Relay moves committed outbox rows to the broker. Create it with New and
// call Run once.
type Relay struct {
	cfg   Config
	store Store
	pub   Publisher
	log   *slog.Logger
	pos   Position
}

// New returns a Relay, or the first configuration problem.
func New(cfg Config, store Store, pub Publisher) (*Relay, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Relay{cfg: cfg, store: store, pub: pub, log: cfg.Logger}, nil
}

// Run publishes until ctx is cancelled, then finishes the round in flight:
// it waits up to ShutdownTimeout for outstanding confirms and records them,
// so a clean stop leaves nothing to republish. It returns nil after a clean
// stop, an error wrapping ErrPositionAhead if the store refuses to start, or
// the reason the last round could not be finished in time.
//
// Run never returns because a server is down: it retries with backoff.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.start(ctx); err != nil {
		return err
	}
	retry := backoff{min: r.cfg.RetryMin, max: r.cfg.RetryMax}
	idle := r.cfg.MinPoll
	var failing error
	for ctx.Err() == nil {
		n, err := r.runOnce(ctx)
		if err != nil {
			if errors.Is(err, ErrShutdownTimeout) {
				return err
			}
			if ctx.Err() != nil {
				// Stopping, and the round failed before anything
				// was confirmed-but-unrecorded that waiting could
				// save: its rows are simply still pending.
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
			r.sleep(ctx, retry.next(), false)
			continue
		}
		if failing != nil {
			r.log.Info("publishing recovered", "position", r.pos.String())
			failing = nil
		}
		retry.reset()
		switch {
		case n == r.cfg.BatchSize:
			idle = r.cfg.MinPoll // a full batch: more are likely waiting
		case n > 0:
			idle = r.cfg.MinPoll
			r.sleep(ctx, idle, true)
		default:
			r.sleep(ctx, idle, true)
			idle = min(idle*2, r.cfg.PollInterval)
		}
	}
	r.log.Info("stopped", "position", r.pos.String())
	return nil
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
		r.sleep(ctx, retry.next(), false)
	}
}

// runOnce reads one batch after the recorded position, publishes it, and
// records the confirmed prefix. It returns how many rows were read.
func (r *Relay) runOnce(ctx context.Context) (int, error) {
	rows, err := r.store.Read(ctx, r.pos, r.cfg.BatchSize)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil // stopping, and nothing is in flight
		}
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}

	msgs := make([]Message, 0, len(rows))
	var mapErr error
	for i := range rows {
		m, err := NewMessage(&rows[i], r.cfg.Exchange)
		if err != nil {
			mapErr = err // publish the rows before it; it stops the round
			break
		}
		msgs = append(msgs, m)
	}

	// Once messages are out, finish the round even if ctx is cancelled:
	// recording their confirms is what keeps a clean stop duplicate-free.
	finish, cancel := drainContext(ctx, r.cfg.ShutdownTimeout)
	defer cancel()

	confirmed := 0
	var pubErr error
	if len(msgs) > 0 {
		confirmed, pubErr = r.pub.Publish(finish, msgs)
	}
	if errors.Is(context.Cause(finish), ErrShutdownTimeout) {
		return 0, fmt.Errorf("%w (%d of %d rows confirmed)", ErrShutdownTimeout, confirmed, len(msgs))
	}
	if confirmed > 0 {
		pos := rows[confirmed-1].Position()
		if err := r.store.Record(finish, pos); err != nil {
			return 0, fmt.Errorf("record position %s: %w", pos, err)
		}
		r.pos = pos
		if h := r.cfg.Hooks.Recorded; h != nil {
			h(pos, confirmed)
		}
	}
	if pubErr != nil {
		return 0, fmt.Errorf("publish: %w", pubErr)
	}
	if mapErr != nil {
		return 0, mapErr
	}
	return len(rows), nil
}

// sleep waits for d, for ctx, or, when wakeable, for a wake-up.
func (r *Relay) sleep(ctx context.Context, d time.Duration, wakeable bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	var wake <-chan struct{}
	if wakeable {
		wake = r.cfg.Wake
	}
	select {
	case <-t.C:
	case <-wake:
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
