package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// PartitionChange is what SetPartitions did.
type PartitionChange struct {
	From, To int
	// From is where every partition starts after a change: the prefix
	// that every old partition had published. Rows after it that a
	// faster partition had published are published again, in order.
	Start relay.Position
}

// SetPartitions, after Migrate, sets the number of partitions of
// cfg.Table to cfg.Partitions (zero or one: not partitioned). A change
// needs every replica stopped: it refuses with relay.ErrNotSetUp while any
// lease of the table or its partitions is held. It moves every partition,
// old and new, to the prefix all old ones had published, so each
// aggregate's rows after it are published again in order, by whichever
// partition now has it: duplicates, never a gap or a reordering.
func SetPartitions(ctx context.Context, cfg Config) (PartitionChange, error) {
	to := max(cfg.Partitions, 1)
	conn, err := pgx.Connect(ctx, cfg.URL)
	if err != nil {
		return PartitionChange{}, fmt.Errorf("connect to %s: %w", Describe(cfg.URL), err)
	}
	defer conn.Close(context.Background())
	var key *string
	if err := conn.QueryRow(ctx, resolveQuery, cfg.Table.String()).Scan(&key); err != nil || key == nil {
		return PartitionChange{}, fmt.Errorf("resolve table %s: %v", cfg.Table, err)
	}
	q, pq := newQueries(cfg.Table, false, false), newPartitionQueries(cfg.Table)
	change := PartitionChange{To: to}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, q.ensurePosition, *key); err != nil {
			return err
		}
		// Every row of the table's, locked: a replica that starts now
		// waits for the change.
		var held string
		err := tx.QueryRow(ctx, pq.lockForChange, *key).Scan(&change.From, &held)
		if err != nil {
			return err
		}
		if change.From == to {
			return nil
		}
		if held != "" {
			return fmt.Errorf("%w: cannot change %s from %d to %d partitions while replicas publish it (%s hold leases); stop every replica first",
				relay.ErrNotSetUp, *key, change.From, to, held)
		}
		// The prefix all old partitions published, and an epoch past
		// every one used on the table's rows, which fences off every
		// replica of the old count and is where the new partition rows
		// start (a fencing token is never used twice for a key).
		var epoch int64
		err = tx.QueryRow(ctx, pq.changeStart, *key, partitionKeys(*key, change.From)).Scan(&change.Start.TxID, &change.Start.ID, &epoch)
		if err != nil {
			return err
		}
		// Dead and dropped rows after the prefix would be read again, and
		// published although they do not hold their aggregate back.
		var dead int
		if err := tx.QueryRow(ctx, pq.deadAfter, *key, change.Start.TxID, change.Start.ID).Scan(&dead); err != nil {
			return err
		}
		if dead > 0 {
			return fmt.Errorf("%w: cannot change %s from %d to %d partitions: %d dead or dropped rows lie after %s, the prefix every partition has published, "+
				"and would be published again. Run the replicas with RELAY_PARTITIONS=%d until every partition's position (outbox-relay status) is past them, "+
				"or retry the dead ones (outbox-relay dead retry), then try again",
				relay.ErrNotSetUp, *key, change.From, to, dead, change.Start, change.From)
		}
		if _, err := tx.Exec(ctx, pq.change, *key, change.Start.TxID, change.Start.ID, to, epoch); err != nil {
			return err
		}
		if to > 1 {
			if _, err := tx.Exec(ctx, pq.ensureParts, *key, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, relay.ErrNotSetUp) {
		err = fmt.Errorf("set partitions of %s: %w", *key, err)
	}
	return change, err
}
