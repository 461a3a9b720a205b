package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// ReplaySelection picks outbox rows to publish again. Conditions combine
// with AND; zero fields match anything.
type ReplaySelection struct {
	FromID, ToID  int64     // row ids, inclusive
	Since, Until  time.Time // created_at: Since inclusive, Until exclusive
	AggregateType string
	AggregateID   string
	EventType     string
}

// args returns the selection as the replay queries' $2..$8.
func (sel ReplaySelection) args() []any {
	id := func(v int64) any {
		if v == 0 {
			return nil
		}
		return v
	}
	at := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return t
	}
	text := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	return []any{id(sel.FromID), id(sel.ToID), at(sel.Since), at(sel.Until),
		text(sel.AggregateType), text(sel.AggregateID), text(sel.EventType)}
}

// ReplayPlan is what a selection covers when a replay starts. Only rows at
// or before Position were published; replaying them is what a replay does.
type ReplayPlan struct {
	Table    string
	Started  bool           // the relay has a position for the table
	Position relay.Position // rows at or before it were published (or parked)
	// Pending counts the selected rows after Position: not published yet,
	// so the relay publishes them anyway.
	Pending int64
	// Parked counts the selected rows the broker rejected and that wait
	// for a retry or are dead (Dead of them): never published, so not
	// replayed.
	Parked, Dead int64
	// PrunedUntil is the newest created_at among the rows retention
	// deleted (zero if it deleted none), PrunedID the highest id.
	PrunedUntil time.Time
	PrunedID    int64
	// Pruned tells whether the selection reaches rows retention may have
	// deleted: they cannot be replayed.
	Pruned bool
}

// PlanReplay reads the recorded position, the retention watermark and the
// selection's pending and parked rows, all from one snapshot.
func (a *Admin) PlanReplay(ctx context.Context, sel ReplaySelection) (ReplayPlan, error) {
	key, err := a.resolve(ctx)
	if err != nil {
		return ReplayPlan{}, err
	}
	q := a.q
	plan := ReplayPlan{Table: key}
	err = pgx.BeginTxFunc(ctx, a.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var prunedUntil *time.Time
		err := tx.QueryRow(ctx, q.replayBounds, key).Scan(&plan.Position.TxID, &plan.Position.ID, &prunedUntil, &plan.PrunedID)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			plan.Position = relay.Position{} // the relay never ran on this table: nothing is published
		case err != nil:
			return fmt.Errorf("read position: %w", err)
		default:
			plan.Started = true
			if prunedUntil != nil {
				plan.PrunedUntil = *prunedUntil
			}
		}
		args := append(append([]any{key}, sel.args()...), plan.Position.TxID, plan.Position.ID)
		if err := tx.QueryRow(ctx, q.replayCounts, args...).Scan(&plan.Pending, &plan.Parked, &plan.Dead); err != nil {
			return fmt.Errorf("count pending and parked rows: %w", err)
		}
		return nil
	})
	if err != nil {
		return ReplayPlan{}, err
	}
	plan.Pruned = !plan.PrunedUntil.IsZero() &&
		(sel.Since.IsZero() || !sel.Since.After(plan.PrunedUntil)) &&
		(sel.FromID == 0 || sel.FromID <= plan.PrunedID)
	return plan, nil
}

// ReplayRows returns up to limit rows of the selection after the cursor and
// at or before plan.Position, parked rows left out, in publishing order.
func (a *Admin) ReplayRows(ctx context.Context, plan ReplayPlan, sel ReplaySelection, after relay.Position, limit int) ([]relay.Row, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	args := append(append([]any{plan.Table}, sel.args()...),
		after.TxID, after.ID, plan.Position.TxID, plan.Position.ID, limit)
	rows, err := a.pool.Query(ctx, a.q.replayRows, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []relay.Row
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
