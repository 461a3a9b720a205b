package relay

import (
	"context"
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
