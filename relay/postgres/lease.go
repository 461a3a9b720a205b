package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// The lease decides which replica publishes a table. It lives in the
// table's position row and is kept in database time, so it needs no session
// to stay alive: a recycled pool connection, a terminated backend or a
// frozen host cannot keep it, only renewals can. Every take bumps the epoch,
// and the position is only written under the current epoch (fencing). A
// lease is taken when it is free or has lapsed, or, before it lapses, when
// its holder is provably gone (identity.go).

// Acquire implements relay.Store: it holds this replica's name, then takes
// the lease if it is free, has lapsed, or belongs to a replica whose
// session is gone, and returns the recorded position. It fails with an
// error wrapping relay.ErrLeaseHeld while another replica holds it, and
// relay.ErrNameInUse while another live process has this replica's name.
func (s *Store) Acquire(ctx context.Context) (relay.Position, error) {
	if s.partitions > 1 {
		return s.acquireShare(ctx)
	}
	if err := s.ensureIdentity(ctx); err != nil {
		return relay.Position{}, err
	}
	pos, err := s.take(ctx, -1)
	if !errors.Is(err, pgx.ErrNoRows) {
		return pos, err
	}
	// The table may have been partitioned since Start (outbox-relay
	// migrate): then this replica must not lead it at all.
	if n, err := s.partitionCount(ctx, s.key); err != nil || n != 1 {
		if err == nil {
			err = s.otherCount(s.key, n)
		}
		return relay.Position{}, err
	}
	holder, remaining, epoch, err := s.holder(ctx)
	if err != nil {
		return relay.Position{}, err
	}
	gone, err := s.holderGone(ctx, holder)
	if err != nil {
		return relay.Position{}, err
	}
	if !gone {
		return relay.Position{}, fmt.Errorf("%w by %q for %.1fs more", relay.ErrLeaseHeld, holder, remaining)
	}
	// Gone now; take over only if still gone, in the same term, a quiet
	// period later, by which a live holder has stopped publishing.
	select {
	case <-time.After(quietPeriod):
	case <-ctx.Done():
		return relay.Position{}, ctx.Err()
	}
	again, _, epochAgain, err := s.holder(ctx)
	if err != nil {
		return relay.Position{}, err
	}
	if again == holder && epochAgain == epoch {
		if gone, err = s.holderGone(ctx, holder); err != nil {
			return relay.Position{}, err
		}
		if gone {
			if pos, err := s.take(ctx, epoch); !errors.Is(err, pgx.ErrNoRows) {
				return pos, err
			}
		}
	}
	return relay.Position{}, fmt.Errorf("%w by %q, whose session ended, but it changed hands or came back meanwhile", relay.ErrLeaseHeld, holder)
}

// take runs the acquire query: a free or lapsed lease, or the one of term
// goneEpoch (-1 for none). pgx.ErrNoRows means it was not taken.
func (s *Store) take(ctx context.Context, goneEpoch int64) (relay.Position, error) {
	var epoch int64
	var pos relay.Position
	err := s.pool.QueryRow(ctx, s.q.acquire, s.key, s.replica, s.leaseTimeout.Milliseconds(), goneEpoch).Scan(&epoch, &pos.TxID, &pos.ID, &pos.LSN)
	if errors.Is(err, pgx.ErrNoRows) {
		return relay.Position{}, err
	}
	if err != nil {
		return relay.Position{}, fmt.Errorf("take lease: %w", err)
	}
	s.epoch.Store(epoch)
	if s.readsAhead() {
		return s.readRecorded(ctx, pos)
	}
	return pos, nil
}

// holder reads who holds the lease, for how long more, in which term.
func (s *Store) holder(ctx context.Context) (name string, remaining float64, epoch int64, err error) {
	if err := s.pool.QueryRow(ctx, s.q.leaseHolder, s.key).Scan(&name, &remaining, &epoch); err != nil {
		return "", 0, 0, fmt.Errorf("read lease: %w", err)
	}
	return name, remaining, epoch, nil
}

// Renew implements relay.Store: it extends the lease by the lease timeout
// and records the leader's state, or fails with relay.ErrLeaseLost if
// another replica took the lease.
func (s *Store) Renew(ctx context.Context, state string) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if s.partitions > 1 {
		return s.renewShare(ctx, state)
	}
	tag, err := s.pool.Exec(ctx, s.q.renew, s.key, s.epoch.Load(), s.replica, s.leaseTimeout.Milliseconds(), state)
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	if tag.RowsAffected() != 1 {
		s.stopStream() // another replica reads the slot now
		return relay.ErrLeaseLost
	}
	return nil
}

// Release implements relay.Store: it gives the lease up, so a standby can
// take over at once after a clean stop.
func (s *Store) Release(ctx context.Context) error {
	s.stopStream()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if s.partitions > 1 {
		return s.releaseShare(ctx)
	}
	if _, err := s.pool.Exec(ctx, s.q.release, s.key, s.epoch.Load(), s.replica); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}
