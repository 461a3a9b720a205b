package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// HeldBack returns the oldest running (or prepared) transaction when
// committed rows after the recorded position wait for it to end, and nil
// when nothing is held back. The relay only reads rows of transactions older
// than every running one, so such a transaction delays publishing (never
// loses rows) for as long as it runs, in any database of the cluster.
func (a *Admin) HeldBack(ctx context.Context) (*Xact, error) {
	key, err := a.resolve(ctx)
	if err != nil {
		return nil, err
	}
	var held bool
	if err := a.pool.QueryRow(ctx, a.q.heldBack, key).Scan(&held); err != nil {
		return nil, fmt.Errorf("check for held-back rows: %w", err)
	}
	if !held {
		return nil, nil
	}
	var x Xact
	err = a.pool.QueryRow(ctx, a.q.blocker).Scan(&x.PID, &x.Database, &x.AgeSeconds, &x.Prepared)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil // it ended meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("find oldest transaction: %w", err)
	}
	return &x, nil
}
