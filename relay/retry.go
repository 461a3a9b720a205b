package relay

import (
	"context"
	"errors"
	"time"
)

// callBudget bounds the store calls of one retry pass.
const callBudget = 30 * time.Second

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
		heads, err := p.store.DueHeads(work, Batch{Rows: 100, MaxPayload: p.cfg.MaxPayloadBytes}, p.cfg.DeadRows)
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
			case p.expired():
				return ErrLeaseLost
			}
			if err := p.retryOne(work, h); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *pipeline) retryOne(ctx context.Context, h ParkedRow) error {
	row := h.Row
	m, err := p.cfg.message(&row)
	confirmed := false
	if err == nil {
		reported := p.nameSkipped(&m, h.Skipped)
		// Wait no longer than the lease is surely ours.
		wctx, cancel := context.WithDeadline(ctx, p.lease.deadline)
		var answers []Answer
		answers, err = p.pub.Publish(ctx, []Message{m}).Wait(wctx)
		cancel()
		switch a := answers[0]; {
		case a.Confirmed:
			confirmed = true
			remaining, err := p.store.Unpark(ctx, row, p.cfg.DeadRows, reported)
			if err != nil {
				return errorf(ctx, "unpark row %d: %w", row.ID, storeError{err})
			}
			p.reported(row.Aggregate(), reported)
			p.published([]Row{row}, time.Now())
			p.unblock(row, remaining)
			return nil
		case a.Refused != nil:
			err = a.Refused
		case errors.Is(err, ErrRejected):
			// A channel exception on the row alone: the row's own failure.
			p.pub.Reset()
		}
		p.unnamed(row.Aggregate(), reported)
	}
	if !confirmed && !errors.Is(err, ErrRejected) && !errors.Is(err, ErrInvalid) {
		return errorf(ctx, "publish parked row %d: %w", row.ID, err)
	}
	p.countFailure(err)
	pk := p.cfg.failed(row, h.Attempts+1, err)
	remaining, ferr := p.store.Failed(ctx, row, pk.Attempts, pk.Reason, pk.Retry, pk.Dead, p.cfg.DeadRows)
	if ferr != nil {
		return errorf(ctx, "count failed attempt of row %d: %w", row.ID, storeError{ferr})
	}
	if pk.Dead {
		p.died(row, pk.Attempts, err)
		p.unblock(row, remaining)
	}
	return nil
}
