package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// ParkedAggregates implements relay.Parking.
func (s *Store) ParkedAggregates(ctx context.Context) ([]relay.Aggregate, error) {
	rows, err := s.pool.Query(ctx, s.q.parkedAggs, s.key)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relay.Aggregate, error) {
		var a relay.Aggregate
		err := r.Scan(&a.Type, &a.ID)
		return a, err
	})
}

// RecordParked implements relay.Parking: the rows are parked and the
// position recorded in one transaction, so a crash between the two can
// neither skip a row nor park it twice.
func (s *Store) RecordParked(ctx context.Context, pos relay.Position, park []relay.Parked) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, s.q.record, s.key, strconv.FormatUint(pos.TxID, 10), pos.ID, s.epoch.Load())
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return relay.ErrLeaseLost
		}
		b := &pgx.Batch{}
		for _, p := range park {
			b.Queue(s.q.park, s.key, p.Row.ID, strconv.FormatUint(p.Row.TxID, 10), p.Row.AggregateType, p.Row.AggregateID,
				p.Attempts, p.Reason, p.Retry.Milliseconds(), p.Dead)
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

// DueHeads implements relay.Parking.
func (s *Store) DueHeads(ctx context.Context, limit int) ([]relay.ParkedRow, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, s.q.dueHeads, s.key, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relay.ParkedRow, error) {
		var p relay.ParkedRow
		var err error
		p.Row, err = scanRow(r, &p.Attempts)
		return p, err
	})
}

// Unpark implements relay.Parking.
func (s *Store) Unpark(ctx context.Context, row relay.Row) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, s.q.unpark, s.key, row.ID, s.epoch.Load())
	if err != nil {
		return 0, err
	}
	if tag.RowsAffected() != 1 {
		return 0, relay.ErrLeaseLost
	}
	var n int
	if err := s.pool.QueryRow(ctx, s.q.remaining, s.key, row.AggregateType, row.AggregateID).Scan(&n); err != nil {
		return 0, err
	}
	return n, nil
}

// Failed implements relay.Parking.
func (s *Store) Failed(ctx context.Context, row relay.Row, attempts int, reason string, retry time.Duration, dead bool) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, s.q.failed, s.key, row.ID, attempts, reason, retry.Milliseconds(), dead, s.epoch.Load())
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("parked row %d: %w", row.ID, relay.ErrLeaseLost)
	}
	return nil
}
