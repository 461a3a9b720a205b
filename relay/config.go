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
	DefaultLinger          = 50 * time.Millisecond
	DefaultShutdownTimeout = 30 * time.Second
	DefaultRetryMin        = 100 * time.Millisecond
	DefaultRetryMax        = 10 * time.Second
	DefaultLeaseTimeout    = 10 * time.Second
	DefaultMaxAttempts     = 10
	DefaultParkRetryMin    = time.Second
	DefaultParkRetryMax    = 5 * time.Minute
	DefaultBatchBytes      = 4 << 20
	DefaultMaxPayloadBytes = 16 << 20
	maxBatchSize           = 10000
	minBatchBytes          = 64 << 10
	maxShortString         = 255
	maxBytes               = 1 << 30
)

// Config configures a Relay. Zero fields take the defaults above.
type Config struct {
	// Exchange receives rows whose exchange column is NULL.
	Exchange string

	// BatchSize is the most rows one read returns and one Publish call
	// sends. Up to two batches await confirms at once (the in-flight
	// window), so a crash republishes at most 2 × BatchSize rows.
	BatchSize int

	// BatchBytes bounds the payloads and headers of one batch as BatchSize
	// bounds its rows: a read returns rows until they hold BatchBytes, and
	// up to two batches' worth of bytes await confirms. A row larger than
	// that goes alone.
	BatchBytes int

	// MaxPayloadBytes is the largest payload the relay loads and
	// publishes. A row with a larger one is dead at once, with the reason,
	// and its payload is never read into memory.
	MaxPayloadBytes int

	// PollInterval is the longest the relay waits between reads when the
	// outbox is idle. After finding rows it polls again after MinPoll, and
	// keeps to MinPoll for Linger; then it doubles the wait on each empty
	// read up to PollInterval. A wake-up from Wake cuts any wait short.
	PollInterval time.Duration

	// MinPoll is the shortest wait between reads that found the outbox
	// drained.
	MinPoll time.Duration

	// Linger is how long after the last read that found rows the relay
	// keeps reading every MinPoll, before its waits start to grow: traffic
	// that pauses for a few milliseconds between rows does not find the
	// relay asleep. It costs reads of an empty outbox meanwhile.
	Linger time.Duration

	// ShutdownTimeout bounds how long Run waits, once its context is
	// cancelled, for the confirms of messages already published.
	ShutdownTimeout time.Duration

	// LeaseTimeout is how long the lease lasts without renewal: how soon
	// a standby takes over after the leader dies. The leader renews it
	// every third of it and stops publishing once three quarters have
	// passed since its last successful renewal began.
	LeaseTimeout time.Duration

	// MaxAttempts is how many failed attempts make a rejected row dead.
	MaxAttempts int

	// ParkRetryMin and ParkRetryMax bound the backoff between attempts
	// at a parked row: ParkRetryMin after the first failure, doubling.
	ParkRetryMin, ParkRetryMax time.Duration

	// RetryMin and RetryMax bound the jittered exponential backoff after a
	// failed round or start.
	RetryMin, RetryMax time.Duration

	// DeadRows is what a dead row does to the later rows of its
	// aggregate: DeadRowsHold (the default) or DeadRowsSkip.
	DeadRows DeadRows

	// LockCheck is what the relay does about rows written without their
	// aggregate's ordering lock: LockCheckWarn (the default) or
	// LockCheckCount.
	LockCheck LockCheck

	// Wake, if set, wakes the relay early: a value means rows may have been
	// committed. It is a hint; polling guarantees progress without it.
	Wake <-chan struct{}

	// Logger receives one line per state change. Nil discards.
	Logger *slog.Logger

	// Observer is told what the relay does, for metrics. Nil tells no one.
	Observer Observer

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
	// Leading runs when this replica takes the lease.
	Leading func()
	// LeaseLost runs when this replica has stopped publishing because it
	// lost the lease.
	LeaseLost func()
}

// renewEvery is how often the leader renews its lease.
func (c Config) renewEvery() time.Duration { return c.LeaseTimeout / 3 }

// leaseValid is how long after a renewal began the leader still publishes:
// a quarter of the lease short of its end in database time, which was set
// after the renewal began, so the leader stops before a standby may start.
func (c Config) leaseValid() time.Duration { return c.LeaseTimeout * 3 / 4 }

// Window is the most rows awaiting confirms at once: two batches. A
// Publisher sizes what it keeps per message in flight by it.
func (c Config) Window() int { return 2 * c.BatchSize }

// WindowBytes is the most bytes of rows (Row.Size) awaiting confirms at
// once: two batches' worth. A row larger than that goes alone.
func (c Config) WindowBytes() int { return 2 * c.BatchBytes }

// batch bounds one read.
func (c Config) batch() Batch {
	return Batch{Rows: c.BatchSize, Bytes: c.BatchBytes, MaxPayload: c.MaxPayloadBytes}
}

// ConfigError names the Config field that is wrong and why.
type ConfigError struct {
	Field   string
	Problem string
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Problem }

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	orDefault(&c.BatchSize, DefaultBatchSize)
	orDefault(&c.BatchBytes, DefaultBatchBytes)
	orDefault(&c.MaxPayloadBytes, DefaultMaxPayloadBytes)
	orDefault(&c.PollInterval, DefaultPollInterval)
	orDefault(&c.MinPoll, min(DefaultMinPoll, c.PollInterval))
	orDefault(&c.Linger, DefaultLinger)
	orDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	orDefault(&c.LeaseTimeout, DefaultLeaseTimeout)
	orDefault(&c.MaxAttempts, DefaultMaxAttempts)
	orDefault(&c.ParkRetryMin, DefaultParkRetryMin)
	orDefault(&c.ParkRetryMax, max(DefaultParkRetryMax, c.ParkRetryMin))
	orDefault(&c.RetryMin, DefaultRetryMin)
	orDefault(&c.RetryMax, max(DefaultRetryMax, c.RetryMin))
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	orDefault(&c.DeadRows, DeadRowsHold)
	orDefault(&c.LockCheck, LockCheckWarn)
	return c
}

// orDefault sets *v to d if it is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Validate reports the first field whose value cannot work.
func (c Config) Validate() error {
	switch {
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return &ConfigError{"BatchSize", fmt.Sprintf("must be between 1 and %d, got %d", maxBatchSize, c.BatchSize)}
	case len(c.Exchange) > maxShortString:
		return &ConfigError{"Exchange", fmt.Sprintf("must be at most %d bytes (an AMQP short string), got %d", maxShortString, len(c.Exchange))}
	case c.BatchBytes < minBatchBytes || c.BatchBytes > maxBytes:
		return &ConfigError{"BatchBytes", fmt.Sprintf("must be between %d and %d, got %d", minBatchBytes, maxBytes, c.BatchBytes)}
	case c.MaxPayloadBytes < 1024 || c.MaxPayloadBytes > maxBytes:
		return &ConfigError{"MaxPayloadBytes", fmt.Sprintf("must be between 1024 and %d, got %d", maxBytes, c.MaxPayloadBytes)}
	case c.PollInterval <= 0:
		return &ConfigError{"PollInterval", fmt.Sprintf("must be positive, got %s", c.PollInterval)}
	case c.MinPoll <= 0 || c.MinPoll > c.PollInterval:
		return &ConfigError{"MinPoll", fmt.Sprintf("must be positive and at most PollInterval, got %s", c.MinPoll)}
	case c.Linger < 0:
		return &ConfigError{"Linger", fmt.Sprintf("must not be negative, got %s", c.Linger)}
	case c.ShutdownTimeout <= 0:
		return &ConfigError{"ShutdownTimeout", fmt.Sprintf("must be positive, got %s", c.ShutdownTimeout)}
	case c.MaxAttempts < 1:
		return &ConfigError{"MaxAttempts", fmt.Sprintf("must be at least 1, got %d", c.MaxAttempts)}
	case c.ParkRetryMin <= 0 || c.ParkRetryMax < c.ParkRetryMin:
		return &ConfigError{"ParkRetryMin", fmt.Sprintf("must be positive and at most ParkRetryMax, got %s..%s", c.ParkRetryMin, c.ParkRetryMax)}
	case c.LeaseTimeout < 100*time.Millisecond:
		return &ConfigError{"LeaseTimeout", fmt.Sprintf("must be at least 100ms, got %s", c.LeaseTimeout)}
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return &ConfigError{"RetryMin", fmt.Sprintf("must be positive and at most RetryMax, got %s..%s", c.RetryMin, c.RetryMax)}
	}
	if c.DeadRows != DeadRowsHold && c.DeadRows != DeadRowsSkip {
		return &ConfigError{"DeadRows", fmt.Sprintf("must be %s or %s, got %q", DeadRowsHold, DeadRowsSkip, c.DeadRows)}
	}
	if err := validLockCheck(c.LockCheck); err != nil {
		return &ConfigError{"LockCheck", err.Error()}
	}
	return nil
}
