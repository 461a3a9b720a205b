package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// LogicalSetUp is what SetUpLogical found or made.
type LogicalSetUp struct {
	Slot, Publication string
	// SlotCreated: the slot is new. Rows committed before it are not in
	// it; the logical source starts once they are published.
	SlotCreated bool
}

// SetUpLogical makes the publication and the replication slot of the
// logical source (cfg.Source), after Migrate: the publication of the
// table's inserts and a pgoutput slot. Existing ones are kept. A new slot
// voids any logical position recorded for an earlier one, and notes which
// rows may predate it (outbox_relay_position.logical_from). Creating a
// slot waits for the transactions running at that moment to end.
func SetUpLogical(ctx context.Context, cfg Config) (LogicalSetUp, error) {
	pc, err := pgx.ParseConfig(cfg.URL)
	if err != nil {
		return LogicalSetUp{}, fmt.Errorf("parse %s: %s", Describe(cfg.URL), redactParseError(err))
	}
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return LogicalSetUp{}, fmt.Errorf("connect to %s: %w", Describe(cfg.URL), err)
	}
	defer conn.Close(context.Background())
	if err := checkWALLevel(ctx, conn); err != nil {
		return LogicalSetUp{}, err
	}
	var key *string
	if err := conn.QueryRow(ctx, resolveQuery, cfg.Table.String()).Scan(&key); err != nil || key == nil {
		return LogicalSetUp{}, fmt.Errorf("resolve table %s: %v", cfg.Table, err)
	}
	var set LogicalSetUp
	set.Slot, set.Publication = logicalNames(cfg.Slot, cfg.Publication, pc.Database, *key)
	// One replica sets up at a time.
	if _, err := conn.Exec(ctx, setUpLockQuery); err != nil {
		return LogicalSetUp{}, err
	}
	defer conn.Exec(context.Background(), setUpFreeQuery)
	q, lq := newQueries(cfg.Table, false, false), newLogicalQueries(cfg.Table)

	var pubExists, published bool
	if err := conn.QueryRow(ctx, publicationQuery, set.Publication, *key).Scan(&pubExists, &published); err != nil {
		return LogicalSetUp{}, fmt.Errorf("read publication %s: %w", set.Publication, err)
	}
	switch {
	case !pubExists:
		if _, err := conn.Exec(ctx, fmt.Sprintf(lq.createPublication, pgx.Identifier{set.Publication}.Sanitize())); err != nil {
			return LogicalSetUp{}, fmt.Errorf("create publication %s: %w", set.Publication, err)
		}
	case !published:
		return LogicalSetUp{}, fmt.Errorf("publication %s exists but does not publish the inserts of %s: add the table (ALTER PUBLICATION ... ADD TABLE) or name another with RELAY_PUBLICATION", set.Publication, *key)
	}

	if _, err := conn.Exec(ctx, q.ensurePosition, *key); err != nil {
		return LogicalSetUp{}, fmt.Errorf("create position row: %w", err)
	}
	var plugin, status string
	var here bool
	err = conn.QueryRow(ctx, slotQuery, set.Slot).Scan(&plugin, &here, &status)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return LogicalSetUp{}, fmt.Errorf("read replication slot %s: %w", set.Slot, err)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := conn.Exec(ctx, createSlotQuery, set.Slot); err != nil {
			return LogicalSetUp{}, fmt.Errorf("create replication slot %s: %w", set.Slot, err)
		}
		set.SlotCreated = true
	}
	if _, err := conn.Exec(ctx, lq.noteSlot, *key, set.SlotCreated); err != nil {
		return LogicalSetUp{}, fmt.Errorf("note the new slot in the position row: %w", err)
	}
	return set, nil
}
