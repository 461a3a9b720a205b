package relay

import (
	"errors"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/retry"
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

// retryEvery is how often the leader looks for parked rows whose turn has
// come: every second, or every ParkRetryMin if that is shorter (no row is
// due sooner), but no more than a hundred times a second, since each look
// waits for the window to drain.
func (c Config) retryEvery() time.Duration {
	return min(time.Second, max(c.ParkRetryMin, 10*time.Millisecond))
}

// parkBackoff is the wait before attempt n+1 after n failed attempts.
func (c Config) parkBackoff(failed int) time.Duration {
	return retry.Ceiling(c.ParkRetryMin, c.ParkRetryMax, failed-1)
}

// parking is the leader's view of parked rows.
type parking struct {
	// parked holds the aggregates with parked rows: their new rows are
	// parked behind them instead of published.
	parked map[Aggregate]bool
	// gaps holds, per aggregate, the rows it went on without that no
	// message has named yet: the next message names them. naming holds
	// those named by a message not yet recorded.
	gaps, naming map[Aggregate][]Skipped
	// retry fires when parked rows may be due; retrying waits for the
	// window to drain (retryWanted), so no held row is still unrecorded.
	retry       *time.Timer
	retryWanted bool
}

// newParking starts from what the store holds: the aggregates held back and
// the rows not yet named.
func newParking(held []Aggregate, gaps map[Aggregate][]Skipped) parking {
	if gaps == nil {
		gaps = map[Aggregate][]Skipped{}
	}
	k := parking{parked: map[Aggregate]bool{}, gaps: gaps, naming: map[Aggregate][]Skipped{}, retry: time.NewTimer(0)}
	for _, a := range held {
		k.parked[a] = true
	}
	return k
}

// heldBack reports whether row waits behind a parked row of its aggregate.
func (p *pipeline) heldBack(row *Row) bool { return p.parking.parked[row.Aggregate()] }

// failed parks row after its attempts-th failed attempt, for reason: dead
// if no attempts are left or no retry can help (ErrInvalid).
func (c Config) failed(row Row, attempts int, reason error) Parked {
	return Parked{Row: row, Attempts: attempts, Reason: reason.Error(), Retry: c.parkBackoff(attempts),
		Dead: attempts >= c.MaxAttempts || errors.Is(reason, ErrInvalid)}
}

// countFailure tells the Observer of a row's failed attempt.
func (p *pipeline) countFailure(reason error) {
	if errors.Is(reason, ErrInvalid) {
		p.cfg.Observer.Failed(FailureInvalid)
	} else {
		p.cfg.Observer.Failed(FailureRejected)
	}
}

// refuse parks row, which the broker refused or which cannot become a
// message, after its first failed attempt (dead at once if no retry can
// help), and holds its aggregate's later rows behind it.
func (p *pipeline) refuse(row Row, reason error) Parked {
	pk := p.cfg.failed(row, 1, reason)
	p.countFailure(reason)
	if pk.Dead {
		p.died(row, 1, reason)
	} else {
		p.log.Warn("row rejected: parked, its aggregate waits behind it, others go on",
			"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "reason", reason)
	}
	if !pk.Dead || p.cfg.DeadRows == DeadRowsHold {
		p.parking.parked[row.Aggregate()] = true
	}
	return pk
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
