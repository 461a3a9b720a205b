package relay

import (
	"errors"
	"time"
)

// Observer is told what the relay does, for metrics and health checks. The
// relay calls it from its loop, so every method must return at once.
type Observer interface {
	// Alive is called at every turn of the relay's loops, leading or
	// not: a loop that stops calling it is stuck.
	Alive()
	// Leading reports that this replica took the lease (true) or stopped
	// publishing for lack of it (false).
	Leading(bool)
	// Sent reports a Publish call of n messages.
	Sent(n int)
	// Confirmed reports that n rows of one Publish call were confirmed
	// and recorded, latency after the call was made; a negative latency
	// is unknown (rows confirmed before a failure, recorded after it).
	Confirmed(n int, latency time.Duration)
	// Failed reports a failure: a round that failed and will be retried,
	// or a row the broker rejected or that cannot become a message.
	Failed(reason Failure)
	// Blocked reports that the broker started (true) or stopped blocking
	// publishers.
	Blocked(bool)
	// Unlocked reports n rows recorded as published whose transaction did
	// not take their aggregate's ordering lock before its first write.
	Unlocked(n int)
	// Skipped reports n rows that died under DeadRowsSkip: their
	// aggregates go on without them.
	Skipped(n int)
}

// Failure is why publishing failed.
type Failure string

// The failures an Observer is told of.
const (
	// FailureRejected: the broker refused one row (unroutable, a missing
	// exchange, a nack, a channel error caused by the row).
	FailureRejected Failure = "rejected"
	// FailureInvalid: a row cannot become a message (bad headers).
	FailureInvalid Failure = "invalid"
	// FailureBroker: the connection or channel to the broker failed.
	FailureBroker Failure = "broker"
	// FailureDatabase: reading rows, recording the position or renewing
	// the lease failed.
	FailureDatabase Failure = "database"
	// FailureLease: this replica lost the lease.
	FailureLease Failure = "lease"
)

// storeError marks an error of the Store, so a failed round can be told
// apart from a broker failure.
type storeError struct{ error }

func (e storeError) Unwrap() error { return e.error }

// failure classifies the error of a failed round.
func failure(err error) Failure {
	var se storeError
	switch {
	case errors.Is(err, ErrLeaseLost):
		return FailureLease
	case errors.As(err, &se):
		return FailureDatabase
	case errors.Is(err, ErrRejected):
		return FailureRejected
	default:
		return FailureBroker
	}
}

// nopObserver is the Observer of a Config that sets none.
type nopObserver struct{}

func (nopObserver) Alive()                       {}
func (nopObserver) Leading(bool)                 {}
func (nopObserver) Sent(int)                     {}
func (nopObserver) Confirmed(int, time.Duration) {}
func (nopObserver) Failed(Failure)               {}
func (nopObserver) Blocked(bool)                 {}
func (nopObserver) Unlocked(int)                 {}
func (nopObserver) Skipped(int)                  {}
