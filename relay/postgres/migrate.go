package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/relay"
)

// Migrate applies the embedded schema.sql (outboxrelay.Schema) to the
// database at url, creating its objects in table's schema (or the first
// schema of search_path when table names none). The schema creates a
// table named outbox, so table's name must be outbox. Migrate is
// idempotent, and safe to run from several replicas at once.
func Migrate(ctx context.Context, url string, table Table) error {
	if table.Name != "outbox" {
		return fmt.Errorf("migrate creates a table named outbox, not %q", table.Name)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", Describe(url), err)
	}
	defer conn.Close(context.Background())

	// One simple-protocol batch runs as one transaction; the advisory lock
	// serializes replicas that migrate at the same moment, which IF NOT
	// EXISTS alone does not make safe.
	script := "SELECT pg_advisory_xact_lock(hashtext('outbox-relay migrate'));\n"
	if table.Schema != "" {
		script += "SET LOCAL search_path TO " + pgx.Identifier{table.Schema}.Sanitize() + ";\n"
	}
	script += outboxrelay.Schema
	if _, err := conn.PgConn().Exec(ctx, script).ReadAll(); err != nil {
		return fmt.Errorf("apply schema: %w", err)
	}
	return nil
}

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
	var level string
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level')`).Scan(&level); err != nil {
		return LogicalSetUp{}, err
	}
	if level != "logical" {
		return LogicalSetUp{}, fmt.Errorf("%w: wal_level is %s; the logical source needs wal_level = logical (set it in postgresql.conf and restart the server)", relay.ErrNotSetUp, level)
	}
	var key *string
	if err := conn.QueryRow(ctx, resolveQuery, cfg.Table.String()).Scan(&key); err != nil || key == nil {
		return LogicalSetUp{}, fmt.Errorf("resolve table %s: %v", cfg.Table, err)
	}
	var set LogicalSetUp
	set.Slot, set.Publication = logicalNames(cfg.Slot, cfg.Publication, pc.Database, *key)
	// One replica sets up at a time.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('outbox-relay migrate'))`); err != nil {
		return LogicalSetUp{}, err
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext('outbox-relay migrate'))`)

	var pubExists, published bool
	if err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
       EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2)`,
		set.Publication, *key).Scan(&pubExists, &published); err != nil {
		return LogicalSetUp{}, fmt.Errorf("read publication %s: %w", set.Publication, err)
	}
	switch {
	case !pubExists:
		if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert')`,
			pgx.Identifier{set.Publication}.Sanitize(), cfg.Table.sql())); err != nil {
			return LogicalSetUp{}, fmt.Errorf("create publication %s: %w", set.Publication, err)
		}
	case !published:
		return LogicalSetUp{}, fmt.Errorf("publication %s exists but does not publish %s: add the table (ALTER PUBLICATION ... ADD TABLE) or name another with RELAY_PUBLICATION", set.Publication, *key)
	}

	pos := cfg.Table.sibling("outbox_relay_position")
	if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (outbox_table) VALUES ($1) ON CONFLICT (outbox_table) DO NOTHING`, pos), *key); err != nil {
		return LogicalSetUp{}, fmt.Errorf("create position row: %w", err)
	}
	var slotExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, set.Slot).Scan(&slotExists); err != nil {
		return LogicalSetUp{}, fmt.Errorf("read replication slot %s: %w", set.Slot, err)
	}
	if !slotExists {
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, set.Slot); err != nil {
			return LogicalSetUp{}, fmt.Errorf("create replication slot %s: %w", set.Slot, err)
		}
		set.SlotCreated = true
	}
	// Every transaction that committed before the slot's consistent point
	// has ended, so its id is below this snapshot's xmin.
	_, err = conn.Exec(ctx, fmt.Sprintf(`
UPDATE %s SET logical_from = pg_snapshot_xmin(pg_current_snapshot()),
              lsn = NULL, lsn_id = NULL, lsn_sample = NULL, lsn_sample_xmin = NULL
 WHERE outbox_table = $1 AND ($2 OR logical_from IS NULL)`, pos), *key, set.SlotCreated)
	if err != nil {
		return LogicalSetUp{}, fmt.Errorf("note the new slot in the position row: %w", err)
	}
	return set, nil
}
