package relay

import (
	"context"
	"errors"
	"time"
)

// lease is what a leader knows of its lease: nothing is published once it
// can no longer vouch for it.
type lease struct {
	// deadline is the local time until which the lease is surely valid;
	// nothing is published after it.
	deadline time.Time
	// lost is closed when the store can no longer vouch for the lease:
	// nothing more is published.
	lost  <-chan struct{}
	renew *time.Timer
}

// expired reports whether the lease can no longer be vouched for: not
// renewed in time (another replica may lead now), or the store lost the
// session that proves this replica alive.
func (p *pipeline) expired() bool {
	return time.Now().After(p.lease.deadline) || closed(p.lease.lost)
}

// renewLease extends the lease and moves the deadline; the timer is armed
// again whatever happens, so a failed renewal is retried.
func (p *pipeline) renewLease(ctx context.Context) error {
	t0 := time.Now()
	state := "publishing"
	if p.paused {
		state = "paused: the broker is blocking publishers"
	}
	err := p.store.Renew(ctx, state)
	if errors.Is(err, ErrHandOver) {
		if !p.handingOver {
			p.log.Info("handing over: this replica's share of the work changes; finishing what is in flight")
		}
		p.handingOver, err = true, nil
	}
	if err == nil {
		p.lease.deadline = t0.Add(p.cfg.leaseValid())
		p.lease.renew.Reset(p.cfg.renewEvery())
		return nil
	}
	p.lease.renew.Reset(p.cfg.renewEvery() / 4) // retry soon, before the deadline passes
	if errors.Is(err, ErrLeaseLost) {
		return err
	}
	return errorf(ctx, "renew lease: %w", storeError{err})
}
