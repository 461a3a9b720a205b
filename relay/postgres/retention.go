package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/retry"
	"github.com/outboxrelay/outboxrelay/relay"
)

// Retention keeps the outbox small: published rows older than the retention
// are deleted by the replica that holds the lease, a bounded batch per short
// transaction, walking outbox_pkey (txid, id) from the oldest row. Rows after
// the recorded position (pending) and parked rows (waiting for a retry, or
// dead) are never deleted: they have not been published. What was deleted
// is recorded in the position row (pruned_until, pruned_id), so a replay can
// tell a row retention deleted from one that never existed.

// Defaults for RetentionConfig fields left zero.
const (
	DefaultRetentionInterval = time.Minute
	DefaultRetentionBatch    = 1000
	DefaultRetentionPause    = 100 * time.Millisecond
	DefaultRetentionTimeout  = 10 * time.Second
)

// retentionFirstPass is how soon after start the first pass runs, so a
// replica that takes the lease at start catches up without waiting a whole
// interval.
const retentionFirstPass = 5 * time.Second

// retentionLockTimeout bounds how long a batch waits for a lock (the
// position row, which the leader updates as it publishes): a batch that
// cannot get it fails and the next pass tries again.
const retentionLockTimeout = time.Second

// RetentionConfig configures a Retention.
type RetentionConfig struct {
	// Retention is how long a published row is kept, counted from its
	// created_at in database time. Zero (or less) disables deletion.
	Retention time.Duration
	// Interval is the time between passes. Zero means a minute, or a
	// quarter of Retention if that is shorter.
	Interval time.Duration
	// Batch is the most rows one DELETE looks at, and so deletes. Zero
	// means DefaultRetentionBatch.
	Batch int
	// Pause is the wait between two batches of a pass, which leaves the
	// disk and the WAL to the writers and the relay. Zero means
	// DefaultRetentionPause.
	Pause time.Duration
	// Timeout bounds each batch (its statement_timeout). Zero means
	// DefaultRetentionTimeout.
	Timeout time.Duration
	// Logger receives a line per pass that deleted rows, and a line when
	// passes start failing and when they recover. Nil discards.
	Logger *slog.Logger
	// OnDeleted, if set, runs after every batch that deleted rows, with
	// their number (for a metric).
	OnDeleted func(n int)
}

// WithDefaults returns c with zero fields set to their defaults.
func (c RetentionConfig) WithDefaults() RetentionConfig {
	if c.Interval <= 0 {
		c.Interval = DefaultRetentionInterval
		if c.Retention > 0 {
			c.Interval = min(c.Interval, c.Retention/4)
		}
	}
	if c.Batch <= 0 {
		c.Batch = DefaultRetentionBatch
	}
	if c.Pause <= 0 {
		c.Pause = DefaultRetentionPause
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultRetentionTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first field that cannot work. A negative Retention
// is not a mistake: like zero, it disables deletion.
func (c RetentionConfig) Validate() error {
	switch {
	case c.Interval < 0:
		return &relay.ConfigError{Field: "Interval", Problem: "must not be negative"}
	case c.Batch < 0:
		return &relay.ConfigError{Field: "Batch", Problem: "must not be negative"}
	case c.Pause < 0:
		return &relay.ConfigError{Field: "Pause", Problem: "must not be negative"}
	case c.Timeout < 0:
		return &relay.ConfigError{Field: "Timeout", Problem: "must not be negative"}
	case c.Timeout > 0 && c.Timeout < time.Millisecond:
		// statement_timeout is in milliseconds, and 0 would disable it.
		return &relay.ConfigError{Field: "Timeout", Problem: "must be at least 1ms"}
	}
	return nil
}

// Retention is the leader's background deletion of published rows. Every
// replica runs one; only the one that holds the lease (of partition 0, when
// replicas share the table) deletes anything, since every batch is fenced
// on that lease.
type Retention struct {
	store *Store
	cfg   RetentionConfig
	prune string // pruneQuery of the store's table
}

// NewRetention returns the retention of s's table.
func NewRetention(s *Store, cfg RetentionConfig) (*Retention, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Retention{store: s, cfg: cfg.WithDefaults(), prune: pruneQuery(s.table)}, nil
}

// Run deletes published rows older than the retention, a pass every
// interval (the first a few seconds after it starts), until ctx ends. It
// returns at once when the retention is zero. Failures are logged once,
// retried at the next pass, and their end is logged once.
func (r *Retention) Run(ctx context.Context) {
	cfg := r.cfg
	if cfg.Retention <= 0 {
		return
	}
	log := cfg.Logger
	t := time.NewTimer(min(cfg.Interval, retentionFirstPass))
	defer t.Stop()
	var failing retry.Streak
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		began := time.Now()
		n, err := r.runOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if failing.Fail(err) {
				log.Warn("retention: deleting published rows failed; retrying at the next pass", "err", err, "deleted", n)
			}
		default:
			if failing.Succeed() > 0 {
				log.Info("retention recovered")
			}
			if n > 0 {
				log.Info("retention: deleted published rows", "rows", n, "older_than", cfg.Retention,
					"took", time.Since(began).Round(time.Millisecond))
			}
		}
		t.Reset(cfg.Interval)
	}
}

// runOnce runs one retention pass and returns how many rows it deleted.
// It walks the published rows in publishing order, Batch at a time, each
// batch one statement in its own short transaction, pausing Pause between
// batches, and deletes the rows of each batch that are older than the
// retention and not parked. It stops at the recorded position, at a batch
// that ends on a row younger than the retention (the rows after it are
// younger still, but for writers' clocks and long transactions), or when
// this replica does not hold the lease. Rows are therefore kept at least
// the retention, and a few a little longer.
func (r *Retention) runOnce(ctx context.Context) (int, error) {
	cfg := r.cfg
	if cfg.Retention <= 0 {
		return 0, nil
	}
	key, err := r.store.resolve(ctx) // not the store's key: Start may be running concurrently
	if err != nil {
		return 0, err
	}
	total := 0
	var cursor relay.Position
	for {
		b, err := r.pruneBatch(ctx, key, cursor)
		if err != nil {
			return total, fmt.Errorf("delete published rows after %s: %w", cursor, err)
		}
		total += b.deleted
		if b.deleted > 0 && cfg.OnDeleted != nil {
			cfg.OnDeleted(b.deleted)
		}
		if b.scanned < cfg.Batch || b.young {
			return total, nil
		}
		cursor = b.last
		t := time.NewTimer(cfg.Pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return total, ctx.Err()
		case <-t.C:
		}
	}
}

// pruneBatch is the outcome of one retention batch.
type pruneBatch struct {
	deleted int            // rows deleted
	scanned int            // rows looked at: fewer than the batch size at the position
	last    relay.Position // the last row looked at: the next batch starts after it
	young   bool           // the last row looked at was younger than the retention
}

func (r *Retention) pruneBatch(ctx context.Context, key string, after relay.Position) (pruneBatch, error) {
	s, cfg := r.store, r.cfg
	var b pruneBatch
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`,
			strconv.FormatInt(cfg.Timeout.Milliseconds(), 10), strconv.FormatInt(retentionLockTimeout.Milliseconds(), 10)); err != nil {
			return err
		}
		fence, epoch := key, s.epoch.Load()
		if s.partitions > 1 {
			fence, epoch = s.partitionFence(key, 0)
		}
		err := tx.QueryRow(ctx, r.prune, key, s.replica, epoch, after.TxID, after.ID,
			cfg.Batch, cfg.Retention.Milliseconds(), fence).Scan(&b.deleted, &b.scanned, &b.last.TxID, &b.last.ID, &b.young)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // nothing left to look at, or not the lease holder
		}
		return err
	})
	return b, err
}
