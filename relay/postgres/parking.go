package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// skip is the SQL parameter of the queries that tell which parked rows
// hold their aggregate back: whether dead rows let it go.
func skip(policy relay.DeadRows) bool { return policy == relay.DeadRowsSkip }

// ParkedAggregates implements relay.Parking.
func (s *Store) ParkedAggregates(ctx context.Context, policy relay.DeadRows) ([]relay.Aggregate, error) {
	rows, err := s.pool.Query(ctx, s.q.parkedAggs, append([]any{s.key, skip(policy)}, s.heldArgs()...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relay.Aggregate, error) {
		var a relay.Aggregate
		err := r.Scan(&a.Type, &a.ID)
		return a, err
	})
}

// Skipped implements relay.Parking.
func (s *Store) Skipped(ctx context.Context, policy relay.DeadRows) (map[relay.Aggregate][]relay.Skipped, error) {
	rows, err := s.pool.Query(ctx, s.q.skipped, append([]any{s.key, skip(policy)}, s.heldArgs()...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[relay.Aggregate][]relay.Skipped{}
	for rows.Next() {
		var a relay.Aggregate
		var k relay.Skipped
		if err := rows.Scan(&a.Type, &a.ID, &k.ID, &k.EventID); err != nil {
			return nil, err
		}
		out[a] = append(out[a], k)
	}
	return out, rows.Err()
}

// RecordParked implements relay.Parking: the rows are parked, the skipped
// rows reported and the position recorded in one transaction, so a crash
// between them can neither skip a row nor park it twice.
func (s *Store) RecordParked(ctx context.Context, pos relay.Position, park []relay.Parked, reported []int64) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var open relay.Position
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if open, err = s.record(ctx, tx, pos); err != nil {
			return err
		}
		b := &pgx.Batch{}
		for _, p := range park {
			b.Queue(s.q.park, s.key, p.Row.ID, p.Row.TxID, p.Row.AggregateType, p.Row.AggregateID,
				p.Attempts, p.Reason, p.Retry.Milliseconds(), p.Dead)
		}
		if len(reported) > 0 {
			b.Queue(s.q.reported, s.key, reported)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err == nil {
		s.recorded(pos, open)
	}
	return err
}

// DueHeads implements relay.Parking.
func (s *Store) DueHeads(ctx context.Context, b relay.Batch, policy relay.DeadRows) ([]relay.ParkedRow, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, s.q.dueHeads, append([]any{s.key, b.Rows, skip(policy), b.MaxPayload}, s.heldArgs()...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relay.ParkedRow, error) {
		var p relay.ParkedRow
		var ids []int64
		var events []string
		var size int32
		var err error
		p.Row, err = scanRow(r, &p.Attempts, &ids, &events, &size)
		p.Row.PayloadSize = int(size)
		for i := range min(len(ids), len(events)) {
			p.Skipped = append(p.Skipped, relay.Skipped{ID: ids[i], EventID: events[i]})
		}
		return p, err
	})
}

// Unpark implements relay.Parking: the row's entry goes and the skipped
// rows its message named are reported, in one transaction.
func (s *Store) Unpark(ctx context.Context, row relay.Row, policy relay.DeadRows, reported []int64) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		fence, epoch := s.fence(row.Aggregate())
		tag, err := tx.Exec(ctx, s.q.unpark, s.key, row.ID, epoch, fence)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return relay.ErrLeaseLost
		}
		if len(reported) > 0 {
			_, err = tx.Exec(ctx, s.q.reported, s.key, reported)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return s.remaining(ctx, row, policy)
}

// Failed implements relay.Parking.
func (s *Store) Failed(ctx context.Context, row relay.Row, attempts int, reason string, retry time.Duration, dead bool, policy relay.DeadRows) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	fence, epoch := s.fence(row.Aggregate())
	tag, err := s.pool.Exec(ctx, s.q.failed, s.key, row.ID, attempts, reason, retry.Milliseconds(), dead, epoch, fence)
	if err != nil {
		return 0, err
	}
	if tag.RowsAffected() != 1 {
		return 0, fmt.Errorf("parked row %d: %w", row.ID, relay.ErrLeaseLost)
	}
	return s.remaining(ctx, row, policy)
}

// remaining counts the parked rows that hold row's aggregate back.
func (s *Store) remaining(ctx context.Context, row relay.Row, policy relay.DeadRows) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, s.q.remaining, s.key, row.AggregateType, row.AggregateID, skip(policy)).Scan(&n); err != nil {
		return 0, err
	}
	return n, nil
}
