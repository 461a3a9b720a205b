package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A row the broker rejects (no route, a missing exchange, a body too large)
// or that cannot become a message at all is parked: the position moves past
// it, so other aggregates keep flowing, while it is retried with capped
// backoff and, after MaxAttempts (at once if no retry can help), kept as
// dead until an operator acts. Later rows of its aggregate are parked
// behind it ("held"), so the aggregate's order holds: they are published,
// in order, once it is published or dropped, or, under DeadRowsSkip, once
// it is dead. The first message of the aggregate published after a row it
// went on without names that row's event in the header SkippedHeader.

// ErrRejected marks a failure that is the row's own (the broker returned or
// refused this message, or it cannot be mapped): retrying other rows is
// fine, retrying this one is unlikely to help soon.
var ErrRejected = errors.New("rejected")

// ErrInvalid marks a rejection that no retry can cure: the row can never
// become a message the broker accepts (headers that cannot be mapped, a
// field longer than AMQP allows, a header frame larger than the broker's
// frame size). Such a row is dead at once, with the reason.
var ErrInvalid = errors.New("cannot be published")

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

// failedOnce parks row after its first failed attempt, for reason: dead at
// once if reason is ErrInvalid or no attempts are left.
func (c Config) failedOnce(row Row, reason error) Parked {
	return Parked{Row: row, Attempts: 1, Reason: reason.Error(), Retry: c.parkBackoff(1),
		Dead: c.MaxAttempts <= 1 || errors.Is(reason, ErrInvalid)}
}

// ParkedRow is a parked row as the store returns it, with the rows its
// aggregate went on without that no message has named yet.
type ParkedRow struct {
	Row      Row
	Attempts int
	Skipped  []Skipped
}

// Skipped is a parked row that its aggregate went on without: dropped by an
// operator, or dead under DeadRowsSkip.
type Skipped struct {
	ID      int64  // the row's id
	EventID string // its event_id, for the SkippedHeader
}

// SkippedHeader names, on the first message of an aggregate published after
// rows it went on without, their event ids (comma-separated, in order).
const SkippedHeader = "outbox_skipped"

// DeadRows is what a dead row does to the later rows of its aggregate.
type DeadRows string

const (
	// DeadRowsHold keeps them waiting until an operator retries or drops
	// the dead row: order and completeness over liveness.
	DeadRowsHold DeadRows = "hold"
	// DeadRowsSkip lets them go on once the row is dead; the next message
	// of the aggregate carries SkippedHeader.
	DeadRowsSkip DeadRows = "skip"
)

// Parking is the store's side of parked rows. Every write is fenced by the
// lease, like Record. A parked row holds its aggregate back unless it was
// dropped, or is dead and the policy is DeadRowsSkip.
type Parking interface {
	// ParkedAggregates lists the aggregates held back by parked rows.
	ParkedAggregates(ctx context.Context, policy DeadRows) ([]Aggregate, error)
	// Skipped lists, per aggregate, the rows it went on without that no
	// message has named yet.
	Skipped(ctx context.Context, policy DeadRows) (map[Aggregate][]Skipped, error)
	// RecordParked parks rows, marks the skipped rows named by a published
	// message (their ids) as reported, and records pos, in one transaction.
	RecordParked(ctx context.Context, pos Position, park []Parked, reported []int64) error
	// DueHeads returns the first parked row of each held-back aggregate
	// whose turn has come (not dead, next attempt due), up to b.Rows, with
	// payloads bounded by b.MaxPayload as Read's.
	DueHeads(ctx context.Context, b Batch, policy DeadRows) ([]ParkedRow, error)
	// Unpark removes a row that was published, marks the skipped rows its
	// message named as reported, and returns how many rows still hold its
	// aggregate back.
	Unpark(ctx context.Context, row Row, policy DeadRows, reported []int64) (remaining int, err error)
	// Failed records a failed attempt: the row is retried after retry, or
	// is dead. It returns how many rows still hold its aggregate back.
	Failed(ctx context.Context, row Row, attempts int, reason string, retry time.Duration, dead bool, policy DeadRows) (remaining int, err error)
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
		heads, err := p.r.store.DueHeads(work, Batch{Rows: 100, MaxPayload: p.r.cfg.MaxPayloadBytes}, p.r.cfg.DeadRows)
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

// callBudget bounds the store calls of one retry pass.
const callBudget = 30 * time.Second

func (p *pipeline) retryOne(ctx context.Context, h ParkedRow) error {
	row := h.Row
	m, err := NewMessage(&row, p.r.cfg.Exchange)
	if row.PayloadSize > p.r.cfg.MaxPayloadBytes {
		err = fmt.Errorf("%w: row %d: its payload of %d bytes is larger than the relay's limit of %d (RELAY_MAX_PAYLOAD_BYTES)",
			ErrInvalid, row.ID, row.PayloadSize, p.r.cfg.MaxPayloadBytes)
	}
	confirmed := false
	if err == nil {
		reported := p.nameSkipped(&m, h.Skipped)
		// Wait no longer than the lease is surely ours.
		wctx, cancel := context.WithDeadline(ctx, p.deadline)
		var answers []Answer
		answers, err = p.r.pub.Publish(ctx, []Message{m}).Wait(wctx)
		cancel()
		switch a := answers[0]; {
		case a.Confirmed:
			confirmed = true
			remaining, err := p.r.store.Unpark(ctx, row, p.r.cfg.DeadRows, reported)
			if err != nil {
				return errorf(ctx, "unpark row %d: %w", row.ID, storeError{err})
			}
			p.reported(row.Aggregate(), reported)
			p.r.unlocked([]Row{row}, time.Now())
			p.unblock(row, remaining)
			return nil
		case a.Refused != nil:
			err = a.Refused
		case errors.Is(err, ErrRejected):
			// A channel exception on the row alone: the row's own failure.
			p.r.pub.Reset()
		}
		p.unnamed(row.Aggregate(), reported)
	}
	if !confirmed && !errors.Is(err, ErrRejected) && !errors.Is(err, ErrInvalid) {
		return errorf(ctx, "publish parked row %d: %w", row.ID, err)
	}
	if errors.Is(err, ErrInvalid) {
		p.r.cfg.Observer.Failed(FailureInvalid)
	} else {
		p.r.cfg.Observer.Failed(FailureRejected)
	}
	attempts := h.Attempts + 1
	dead := attempts >= p.r.cfg.MaxAttempts || errors.Is(err, ErrInvalid)
	remaining, ferr := p.r.store.Failed(ctx, row, attempts, err.Error(), p.r.cfg.parkBackoff(attempts), dead, p.r.cfg.DeadRows)
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
	if p.r.cfg.DeadRows == DeadRowsSkip {
		p.gaps[row.Aggregate()] = append(p.gaps[row.Aggregate()], Skipped{ID: row.ID, EventID: row.EventID})
		p.r.cfg.Observer.Skipped(1)
		p.r.log.Error("row is dead: its aggregate goes on without it (RELAY_DEAD_ROWS=skip; outbox-relay dead)",
			"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "attempts", attempts, "reason", reason)
		return
	}
	p.r.log.Error("row is dead: its aggregate waits until it is retried or dropped (outbox-relay dead)",
		"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "attempts", attempts, "reason", reason)
}

// unblock lets row's aggregate flow again once no parked row holds it back.
func (p *pipeline) unblock(row Row, remaining int) {
	if remaining == 0 && p.parked[row.Aggregate()] {
		delete(p.parked, row.Aggregate())
		p.r.log.Info("parked aggregate drained", "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID)
	}
}

// nameSkipped adds to m, the next message of its aggregate, the header
// naming the rows the aggregate went on without (skipped, from the store,
// and those this replica saw die), and returns their ids. Until m is
// recorded (reported) or comes back unconfirmed (unnamed), the rows are
// pending: later messages of the aggregate do not name them again.
func (p *pipeline) nameSkipped(m *Message, skipped []Skipped) []int64 {
	agg := m.Aggregate
	all := append(slices.Clone(skipped), p.gaps[agg]...)
	if len(all) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(all))
	events := make([]string, 0, len(all))
	for _, s := range all {
		if !slices.Contains(ids, s.ID) && !slices.ContainsFunc(p.naming[agg], func(n Skipped) bool { return n.ID == s.ID }) {
			ids = append(ids, s.ID)
			events = append(events, s.EventID)
			p.naming[agg] = append(p.naming[agg], s)
		}
	}
	delete(p.gaps, agg)
	if len(ids) == 0 {
		return nil
	}
	m.Headers[SkippedHeader] = strings.Join(events, ",")
	return ids
}

// reported forgets the skipped rows of agg that a recorded message named.
func (p *pipeline) reported(agg Aggregate, ids []int64) {
	p.naming[agg] = slices.DeleteFunc(p.naming[agg], func(s Skipped) bool { return slices.Contains(ids, s.ID) })
	if len(p.naming[agg]) == 0 {
		delete(p.naming, agg)
	}
}

// unnamed puts the rows of agg that a message named back among the gaps,
// when the message was not confirmed: the next message names them.
func (p *pipeline) unnamed(agg Aggregate, ids []int64) {
	for _, s := range p.naming[agg] {
		if slices.Contains(ids, s.ID) {
			p.gaps[agg] = append(p.gaps[agg], s)
		}
	}
	p.reported(agg, ids)
}
