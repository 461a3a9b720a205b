package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// The lease decides which replica publishes a table. It lives in the
// table's position row and is kept in database time, so it needs no session
// to stay alive: a recycled pool connection, a terminated backend or a
// frozen host cannot keep it, only renewals can. Every take bumps the epoch,
// and the position is only written under the current epoch (fencing).

// Acquire implements relay.Store: it takes the lease if it is free, has
// lapsed, or already carries this replica's name (a restart of the same
// replica), and returns the recorded position. It fails with an error
// wrapping relay.ErrLeaseHeld while another replica holds it.
func (s *Store) Acquire(ctx context.Context) (relay.Position, error) {
	var epoch int64
	var txid string
	var pos relay.Position
	err := s.pool.QueryRow(ctx, s.q.acquire, s.key, s.replica, s.leaseTimeout.Milliseconds()).Scan(&epoch, &txid, &pos.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		var holder string
		var remaining float64
		if err := s.pool.QueryRow(ctx, s.q.leaseHolder, s.key).Scan(&holder, &remaining); err != nil {
			return relay.Position{}, fmt.Errorf("read lease: %w", err)
		}
		return relay.Position{}, fmt.Errorf("%w by %q for %.1fs more", relay.ErrLeaseHeld, holder, remaining)
	}
	if err != nil {
		return relay.Position{}, fmt.Errorf("take lease: %w", err)
	}
	if pos.TxID, err = strconv.ParseUint(txid, 10, 64); err != nil {
		return relay.Position{}, fmt.Errorf("parse position txid %q: %w", txid, err)
	}
	s.epoch.Store(epoch)
	return pos, nil
}

// Renew implements relay.Store: it extends the lease by the lease timeout
// and records the leader's state, or fails with relay.ErrLeaseLost if
// another replica took the lease.
func (s *Store) Renew(ctx context.Context, state string) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, s.q.renew, s.key, s.epoch.Load(), s.replica, s.leaseTimeout.Milliseconds(), state)
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return relay.ErrLeaseLost
	}
	return nil
}

// Release implements relay.Store: it gives the lease up, so a standby can
// take over at once after a clean stop.
func (s *Store) Release(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, s.q.release, s.key, s.epoch.Load(), s.replica); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}
