package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A row the broker rejects (no route, a missing exchange, a body too large)
// or that cannot become a message at all is parked: the position moves past
// it, so other aggregates keep flowing, while it is retried with capped
// backoff and, after MaxAttempts, kept as dead until an operator acts. Later
// rows of its aggregate are parked behind it ("held"), so the aggregate's
// order holds: they are published, in order, once it is.

// ErrRejected marks a failure that is the row's own (the broker returned or
// refused this message, or it cannot be mapped): retrying other rows is
// fine, retrying this one is unlikely to help soon.
var ErrRejected = errors.New("rejected")

// Aggregate identifies an ordering key.
type Aggregate struct{ Type, ID string }

// Aggregate returns the row's ordering key.
func (r *Row) Aggregate() Aggregate { return Aggregate{r.AggregateType, r.AggregateID} }

// Parked is a row to park: Attempts 0 holds it behind an earlier parked row
// of its aggregate; Attempts 1 records a first failure.
type Parked struct {
	Row      Row
	Attempts int
	Reason   string
	Retry    time.Duration // until the next attempt
	Dead     bool          // no attempts left
}

// failedOnce parks row after its first failed attempt.
func (c Config) failedOnce(row Row, reason string) Parked {
	return Parked{Row: row, Attempts: 1, Reason: reason, Retry: c.parkBackoff(1), Dead: c.MaxAttempts <= 1}
}

// ParkedRow is a parked row as the store returns it.
type ParkedRow struct {
	Row      Row
	Attempts int
}

// Parking is the store's side of parked rows. Every write is fenced by the
// lease, like Record.
type Parking interface {
	// ParkedAggregates lists the aggregates that have parked rows.
	ParkedAggregates(ctx context.Context) ([]Aggregate, error)
	// RecordParked parks rows and records pos, in one transaction.
	RecordParked(ctx context.Context, pos Position, park []Parked) error
	// DueHeads returns the first parked row of each aggregate whose turn
	// has come (not dead, next attempt due), up to limit.
	DueHeads(ctx context.Context, limit int) ([]ParkedRow, error)
	// Unpark removes a row that was published and returns how many rows of
	// its aggregate remain parked.
	Unpark(ctx context.Context, row Row) (remaining int, err error)
	// Failed records a failed attempt: the row is retried after retry, or
	// is dead.
	Failed(ctx context.Context, row Row, attempts int, reason string, retry time.Duration, dead bool) error
}

// parkBackoff is the wait before attempt n+1 after n failed attempts.
func (c Config) parkBackoff(failed int) time.Duration {
	d := c.ParkRetryMin << min(failed-1, 30)
	if d > c.ParkRetryMax || d <= 0 {
		d = c.ParkRetryMax
	}
	return d
}

// retryParked publishes the parked rows whose turn has come, one at a time
// and in order per aggregate, until none is due or budget is spent. It is
// called with nothing in flight.
func (p *pipeline) retryParked(ctx context.Context) error {
	// The parked-row bookkeeping of a retry is finished even if a stop
	// arrives meanwhile: a published row left parked would be published
	// again at the next start.
	work, cancel := context.WithTimeout(context.WithoutCancel(ctx), callBudget)
	defer cancel()
	budget := time.Now().Add(time.Second)
	for time.Now().Before(budget) {
		heads, err := p.r.store.DueHeads(work, 100)
		if err != nil {
			return errorf(ctx, "find parked rows: %w", storeError{err})
		}
		if len(heads) == 0 {
			return nil
		}
		for _, h := range heads {
			switch {
			case ctx.Err() != nil, time.Now().After(budget), p.blocked():
				return nil // stopping, out of time, or the broker blocks
			case time.Now().After(p.deadline):
				return ErrLeaseLost
			}
			if err := p.retryOne(work, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// callBudget bounds the store calls of one retry pass.
const callBudget = 30 * time.Second

func (p *pipeline) retryOne(ctx context.Context, h ParkedRow) error {
	row := h.Row
	m, err := NewMessage(&row, p.r.cfg.Exchange)
	var n int
	if err == nil {
		// Wait no longer than the lease is surely ours.
		wctx, cancel := context.WithDeadline(ctx, p.deadline)
		n, err = p.r.pub.Publish(ctx, []Message{m}).Wait(wctx)
		cancel()
	} else {
		err = fmt.Errorf("%w: %w", ErrRejected, err)
	}
	if n == 1 {
		remaining, err := p.r.store.Unpark(ctx, row)
		if err != nil {
			return errorf(ctx, "unpark row %d: %w", row.ID, storeError{err})
		}
		p.r.unlocked([]Row{row}, time.Now())
		if remaining == 0 {
			delete(p.parked, row.Aggregate())
			p.r.log.Info("parked aggregate drained", "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID)
		}
		return nil
	}
	if !errors.Is(err, ErrRejected) {
		return errorf(ctx, "publish parked row %d: %w", row.ID, err)
	}
	p.r.pub.Reset()
	p.r.cfg.Observer.Failed(FailureRejected)
	attempts := h.Attempts + 1
	dead := attempts >= p.r.cfg.MaxAttempts
	if err := p.r.store.Failed(ctx, row, attempts, err.Error(), p.r.cfg.parkBackoff(attempts), dead); err != nil {
		return errorf(ctx, "count failed attempt of row %d: %w", row.ID, storeError{err})
	}
	if dead {
		p.r.log.Error("row is dead: its aggregate waits until it is retried or dropped (outbox-relay dead)",
			"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "attempts", attempts, "reason", err)
	}
	return nil
}
