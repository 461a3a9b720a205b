package relay

import (
	"context"
	"errors"
	"time"
)

// Store is the outbox as the core sees it.
type Store interface {
	// Start prepares the store and returns the recorded position. It fails
	// with an error wrapping ErrPositionAhead when the recorded position or
	// the table's rows lie beyond the server's transaction counter, and
	// with one wrapping ErrNotSetUp when the database lacks what the store
	// needs.
	Start(ctx context.Context) (Position, error)
	// Read returns committed rows after the position, in publishing
	// order, within the bounds of b: read again from any position it
	// returned, it returns every row after it exactly once. A store may
	// return a row while an older transaction is still running and that
	// transaction's rows later, once it commits; the positions then carry
	// what the store needs to know which rows it returned (Position.Ahead).
	Read(ctx context.Context, after Position, b Batch) ([]Row, error)
	// Acquire takes the lease that makes this replica the one publisher of
	// the table, and returns the recorded position. It fails with an error
	// wrapping ErrLeaseHeld while another replica holds the lease, and
	// with one wrapping ErrNotSetUp when the table no longer fits this
	// replica's configuration (the relay then stops).
	Acquire(ctx context.Context) (Position, error)
	// Renew extends the lease by the lease timeout and records state (what
	// the leader is doing, for status). It fails with ErrLeaseLost if
	// another replica took the lease. A store whose replicas share the
	// work returns ErrHandOver, after renewing, when this replica's share
	// should change: the leader then publishes nothing more, waits for
	// what is in flight, records it, releases and acquires again.
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

// ErrNotSetUp means the database is not set up for the source the relay
// was configured with (a server setting, a missing replication slot or
// publication): retrying cannot help, so the relay refuses to start and
// the error says what to change.
var ErrNotSetUp = errors.New("the database is not set up for this relay")

// ErrLeaseHeld means another replica holds the lease: this one stands by.
var ErrLeaseHeld = errors.New("lease held")

// ErrNameInUse means another live replica has this replica's name: this
// one does not lead until it is gone.
var ErrNameInUse = errors.New("replica name in use")

// ErrLeaseLost means this replica no longer holds the lease: it stops
// publishing and stands by.
var ErrLeaseLost = errors.New("lease lost to another replica")

// ErrHandOver means the lease was renewed, but this replica's share of the
// work changes (a replica joined or left): it finishes what is in flight,
// releases and acquires its new share.
var ErrHandOver = errors.New("share of the work changes")

// ErrShutdownTimeout means Run stopped before every message in flight was
// confirmed and recorded: those rows will be published again at the next
// start.
var ErrShutdownTimeout = errors.New("shutdown timeout: stopped before every message in flight was confirmed and recorded")

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

// Parked is a row to park: Attempts 0 holds it behind an earlier parked row
// of its aggregate; Attempts 1 records a first failure.
type Parked struct {
	Row      Row
	Attempts int
	Reason   string
	Retry    time.Duration // until the next attempt
	Dead     bool          // no attempts left
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

// ErrRejected marks a failure that is the row's own (the broker returned or
// refused this message, or it cannot be mapped): retrying other rows is
// fine, retrying this one is unlikely to help soon.
var ErrRejected = errors.New("rejected")

// ErrInvalid marks a rejection that no retry can cure: the row can never
// become a message the broker accepts (headers that cannot be mapped, a
// field longer than AMQP allows, a header frame larger than the broker's
// frame size). Such a row is dead at once, with the reason.
var ErrInvalid = errors.New("cannot be published")
