package postgres

import (
	"context"
	"log/slog"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Defaults for HoldUpWatcherConfig fields left zero.
const (
	DefaultHoldUpInterval  = 5 * time.Second
	DefaultHoldUpThreshold = 10 * time.Second
)

// HoldUpWatcherConfig configures a HoldUpWatcher.
type HoldUpWatcherConfig struct {
	// Interval is the time between two checks. Zero means
	// DefaultHoldUpInterval.
	Interval time.Duration
	// Threshold is how long a hold-up must have been seen before it is
	// logged. Zero means DefaultHoldUpThreshold.
	Threshold time.Duration
	// Logger receives the two lines: the hold-up, and its end. Nil
	// discards.
	Logger *slog.Logger
}

// WithDefaults returns c with zero fields set to their defaults.
func (c HoldUpWatcherConfig) WithDefaults() HoldUpWatcherConfig {
	if c.Interval == 0 {
		c.Interval = DefaultHoldUpInterval
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultHoldUpThreshold
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first field that cannot work.
func (c HoldUpWatcherConfig) Validate() error {
	if c.Interval < 0 {
		return &relay.ConfigError{Field: "Interval", Problem: "must not be negative"}
	}
	if c.Threshold < 0 {
		return &relay.ConfigError{Field: "Threshold", Problem: "must not be negative"}
	}
	return nil
}

// HoldUpWatcher logs, once, when a long transaction has held publishing
// back for at least its threshold, and once when it no longer does. It runs
// beside the relay on every replica: the hold-up is the cluster's, not the
// leader's.
type HoldUpWatcher struct {
	admin *Admin
	cfg   HoldUpWatcherConfig
	now   func() time.Time

	since  time.Time // when the current hold-up was first seen
	warned bool
}

// NewHoldUpWatcher returns a watcher of a's table.
func NewHoldUpWatcher(a *Admin, cfg HoldUpWatcherConfig) (*HoldUpWatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &HoldUpWatcher{admin: a, cfg: cfg.WithDefaults(), now: time.Now}, nil
}

// Run checks every interval until ctx ends. Errors are left to the relay's
// own logging: it fails on the same database first.
func (w *HoldUpWatcher) Run(ctx context.Context) {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = w.runOnce(ctx)
	}
}

// runOnce checks for a hold-up and logs a change that passed the
// threshold.
func (w *HoldUpWatcher) runOnce(ctx context.Context) error {
	x, err := w.admin.HeldBack(ctx)
	if err != nil {
		return err
	}
	log := w.cfg.Logger
	if x == nil {
		if w.warned {
			log.Info("publishing no longer held back by a long transaction")
		}
		w.since, w.warned = time.Time{}, false
		return nil
	}
	if w.since.IsZero() {
		w.since = w.now()
	}
	if !w.warned && w.now().Sub(w.since) >= w.cfg.Threshold {
		w.warned = true
		log.Warn("publishing held back: committed rows wait for an older transaction to end",
			"pid", x.PID, "database", x.Database, "prepared", x.Prepared,
			"transaction_age", time.Duration(x.AgeSeconds*float64(time.Second)).Round(time.Millisecond))
	}
	return nil
}
