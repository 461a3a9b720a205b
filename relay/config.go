package relay

import (
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultBatchSize       = 500
	DefaultPollInterval    = 100 * time.Millisecond
	DefaultMinPoll         = time.Millisecond
	DefaultShutdownTimeout = 30 * time.Second
	DefaultRetryMin        = 100 * time.Millisecond
	DefaultRetryMax        = 10 * time.Second
	maxBatchSize           = 10000
)

// Config configures a Relay. Zero fields take the defaults above.
type Config struct {
	// Exchange receives rows whose exchange column is NULL.
	Exchange string

	// BatchSize is the most rows one read returns and one Publish call
	// sends. Up to two batches await confirms at once (the in-flight
	// window), so a crash republishes at most 2 × BatchSize rows.
	BatchSize int

	// PollInterval is the longest the relay waits between reads when the
	// outbox is idle. After finding rows it polls again after MinPoll,
	// doubling the wait on each empty read up to PollInterval. A wake-up
	// from Wake cuts any wait short.
	PollInterval time.Duration

	// MinPoll is the shortest wait between reads that found the outbox
	// drained.
	MinPoll time.Duration

	// ShutdownTimeout bounds how long Run waits, once its context is
	// cancelled, for the confirms of messages already published.
	ShutdownTimeout time.Duration

	// RetryMin and RetryMax bound the jittered exponential backoff after a
	// failed round or start.
	RetryMin, RetryMax time.Duration

	// Wake, if set, wakes the relay early: a value means rows may have been
	// committed. It is a hint; polling guarantees progress without it.
	Wake <-chan struct{}

	// Logger receives one line per state change. Nil discards.
	Logger *slog.Logger

	// Hooks let tests wait on events instead of sleeping.
	Hooks Hooks
}

// Hooks are optional callbacks run synchronously by the relay loop.
type Hooks struct {
	// Recorded runs after a position is recorded, with the rows it covers
	// newly.
	Recorded func(pos Position, rows int)
	// RoundFailed runs after a failed round, before the backoff.
	RoundFailed func(err error)
}

// window is the most rows awaiting confirms at once.
func (c Config) window() int { return 2 * c.BatchSize }

// ConfigError names the Config field that is wrong and why.
type ConfigError struct {
	Field   string
	Problem string
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Problem }

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MinPoll == 0 {
		c.MinPoll = min(DefaultMinPoll, c.PollInterval)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(DefaultRetryMax, c.RetryMin)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// Validate reports the first field whose value cannot work.
func (c Config) Validate() error {
	switch {
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return &ConfigError{"BatchSize", fmt.Sprintf("must be between 1 and %d, got %d", maxBatchSize, c.BatchSize)}
	case c.PollInterval <= 0:
		return &ConfigError{"PollInterval", fmt.Sprintf("must be positive, got %s", c.PollInterval)}
	case c.MinPoll <= 0 || c.MinPoll > c.PollInterval:
		return &ConfigError{"MinPoll", fmt.Sprintf("must be positive and at most PollInterval, got %s", c.MinPoll)}
	case c.ShutdownTimeout <= 0:
		return &ConfigError{"ShutdownTimeout", fmt.Sprintf("must be positive, got %s", c.ShutdownTimeout)}
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return &ConfigError{"RetryMin", fmt.Sprintf("must be positive and at most RetryMax, got %s..%s", c.RetryMin, c.RetryMax)}
	}
	return nil
}
