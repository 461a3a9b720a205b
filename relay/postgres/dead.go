package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// DeadRow is a row the relay gave up on after RELAY_MAX_ATTEMPTS.
type DeadRow struct {
	ID            int64   `json:"id"`
	AggregateType string  `json:"aggregate_type"`
	AggregateID   string  `json:"aggregate_id"`
	EventType     string  `json:"event_type"`
	RoutingKey    string  `json:"routing_key"`
	Attempts      int     `json:"attempts"`
	Reason        string  `json:"reason"`
	AgeSeconds    float64 `json:"age_seconds"` // since it was parked
	Waiting       int64   `json:"waiting"`     // rows of its aggregate waiting behind it
}

// Dead lists the dead rows of the table, in publishing order.
func (a *Admin) Dead(ctx context.Context) ([]DeadRow, error) {
	key, err := a.resolve(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := a.pool.Query(ctx, a.q.deadList, key)
	if err != nil {
		return nil, fmt.Errorf("list dead rows: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadRow, error) {
		var d DeadRow
		err := r.Scan(&d.ID, &d.AggregateType, &d.AggregateID, &d.Attempts, &d.Reason, &d.AgeSeconds, &d.EventType, &d.RoutingKey, &d.Waiting)
		return d, err
	})
}

// RetryDead sends dead rows back for publishing (all of them, or those with
// the given ids): the leader retries them at once, in order, and their
// aggregates flow again once they are published. It returns the ids.
func (a *Admin) RetryDead(ctx context.Context, all bool, ids []int64) ([]int64, error) {
	return a.deadUpdate(ctx, a.q.deadRetry, all, ids)
}

// DropDead discards dead rows (all of them, or those with the given ids):
// they are never published, and the rows waiting behind them go on. It
// returns the ids.
func (a *Admin) DropDead(ctx context.Context, all bool, ids []int64) ([]int64, error) {
	return a.deadUpdate(ctx, a.q.deadDrop, all, ids)
}

func (a *Admin) deadUpdate(ctx context.Context, query string, all bool, ids []int64) ([]int64, error) {
	key, err := a.resolve(ctx)
	if err != nil {
		return nil, err
	}
	if ids == nil {
		ids = []int64{}
	}
	rows, err := a.pool.Query(ctx, query, key, all, ids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
