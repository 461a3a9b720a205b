package relay

import (
	"math/rand/v2"
	"time"
)

// backoff is a capped exponential backoff with full jitter: the n-th wait is
// uniform in [min, min*2^n], never above max. Jitter keeps a fleet of
// sidecars from reconnecting in lockstep after an outage.
type backoff struct {
	min, max time.Duration
	attempt  int
}

func (b *backoff) next() time.Duration {
	ceil := b.min << min(b.attempt, 30)
	if ceil > b.max || ceil <= 0 {
		ceil = b.max
	}
	b.attempt++
	return b.min + rand.N(ceil-b.min+1)
}

func (b *backoff) reset() { b.attempt = 0 }
