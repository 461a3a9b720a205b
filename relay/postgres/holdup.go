package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// HeldBack returns the oldest running (or prepared) transaction when
// committed rows after the recorded position wait for it to end, and nil
// when nothing is held back. The relay only reads rows of transactions older
// than every running one, so such a transaction delays publishing (never
// loses rows) for as long as it runs, in any database of the cluster.
func (s *Store) HeldBack(ctx context.Context) (*Xact, error) {
	key, err := s.resolve(ctx) // not s.key: Start may be running concurrently
	if err != nil {
		return nil, err
	}
	var held bool
	if err := s.pool.QueryRow(ctx, s.q.heldBack, key).Scan(&held); err != nil {
		return nil, fmt.Errorf("check for held-back rows: %w", err)
	}
	if !held {
		return nil, nil
	}
	var x Xact
	err = s.pool.QueryRow(ctx, s.q.blocker).Scan(&x.PID, &x.Database, &x.AgeSeconds, &x.Prepared)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil // it ended meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("find oldest transaction: %w", err)
	}
	return &x, nil
}

// WatchHoldUps logs, once, when a long transaction has held publishing back
// for at least threshold, and once when it no longer does. It checks every
// interval until ctx ends; errors are left to the relay's own logging.
func WatchHoldUps(ctx context.Context, s *Store, interval, threshold time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var since time.Time // when the current hold-up was first seen
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		x, err := s.HeldBack(ctx)
		if err != nil {
			continue
		}
		if x == nil {
			if warned {
				log.Info("publishing no longer held back by a long transaction")
			}
			since, warned = time.Time{}, false
			continue
		}
		if since.IsZero() {
			since = time.Now()
		}
		if !warned && time.Since(since) >= threshold {
			warned = true
			log.Warn("publishing held back: committed rows wait for an older transaction to end",
				"pid", x.PID, "database", x.Database, "prepared", x.Prepared,
				"transaction_age", time.Duration(x.AgeSeconds*float64(time.Second)).Round(time.Millisecond))
		}
	}
}
