package relay

import (
	"context"
	"errors"
	"fmt"
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
	m, err := NewMessage(&row, p.cfg.Exchange)
	if row.PayloadSize > p.cfg.MaxPayloadBytes {
		err = fmt.Errorf("%w: row %d: its payload of %d bytes is larger than the relay's limit of %d (RELAY_MAX_PAYLOAD_BYTES)",
			ErrInvalid, row.ID, row.PayloadSize, p.cfg.MaxPayloadBytes)
	}
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
	if errors.Is(err, ErrInvalid) {
		p.cfg.Observer.Failed(FailureInvalid)
	} else {
		p.cfg.Observer.Failed(FailureRejected)
	}
	attempts := h.Attempts + 1
	dead := attempts >= p.cfg.MaxAttempts || errors.Is(err, ErrInvalid)
	remaining, ferr := p.store.Failed(ctx, row, attempts, err.Error(), p.cfg.parkBackoff(attempts), dead, p.cfg.DeadRows)
	if ferr != nil {
		return errorf(ctx, "count failed attempt of row %d: %w", row.ID, storeError{ferr})
	}
	if dead {
		p.died(row, attempts, err)
		p.unblock(row, remaining)
	}
	return nil
}

// died reports a row that became dead, and under DeadRowsSkip remembers it
// for the next message of its aggregate to name.
func (p *pipeline) died(row Row, attempts int, reason error) {
	if p.cfg.DeadRows == DeadRowsSkip {
		p.parking.gaps[row.Aggregate()] = append(p.parking.gaps[row.Aggregate()], Skipped{ID: row.ID, EventID: row.EventID})
		p.cfg.Observer.Skipped(1)
		p.log.Error("row is dead: its aggregate goes on without it (RELAY_DEAD_ROWS=skip; outbox-relay dead)",
			"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "attempts", attempts, "reason", reason)
		return
	}
	p.log.Error("row is dead: its aggregate waits until it is retried or dropped (outbox-relay dead)",
		"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "attempts", attempts, "reason", reason)
}

// unblock lets row's aggregate flow again once no parked row holds it back.
func (p *pipeline) unblock(row Row, remaining int) {
	if remaining == 0 && p.parking.parked[row.Aggregate()] {
		delete(p.parking.parked, row.Aggregate())
		p.log.Info("parked aggregate drained", "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID)
	}
}
