// Package retry is how the module's loops wait and report while something
// they need keeps failing: a capped exponential backoff with jitter, and a
// streak of failures reported once when it starts and once when it ends.
package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential backoff with full jitter: the n-th wait
// after a failure is uniform in [Min, Min·2ⁿ], never above Max. Jitter
// keeps a fleet of sidecars from retrying in lockstep after an outage. The
// zero Backoff waits nothing; set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	n        int
}

// Next returns the wait before the next attempt and counts the failure.
func (b *Backoff) Next() time.Duration {
	ceil := Ceiling(b.Min, b.Max, b.n)
	b.n++
	return b.Min + rand.N(ceil-b.Min+1)
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Ceiling is the n-th wait of an exponential backoff without jitter:
// base·2ⁿ, at most ceiling (and ceiling if that overflows).
func Ceiling(base, ceiling time.Duration, n int) time.Duration {
	d := base << min(max(n, 0), 30)
	if d > ceiling || d <= 0 {
		return ceiling
	}
	return d
}
