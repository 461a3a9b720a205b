package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// The logical source's SQL, for its store (logical_store.go), its set-up
// (logical_setup.go) and status. The position queries of its records are
// in queries.go, beside the poll source's.
const (
	walLevelQuery = `SELECT current_setting('wal_level')`
	// slotQuery describes slot $1: its plugin, whether it is of this
	// database, its wal_status (lost once invalidated).
	slotQuery = `
SELECT coalesce(plugin, ''), database IS NOT DISTINCT FROM current_database(), coalesce(wal_status, '')
  FROM pg_replication_slots WHERE slot_name = $1`
	// publicationQuery tells whether publication $1 exists, and whether it
	// publishes the inserts of the table $2 (schema.name).
	publicationQuery = `
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
       EXISTS (SELECT 1 FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname
                WHERE p.pubname = $1 AND p.pubinsert AND t.schemaname || '.' || t.tablename = $2)`
	slotStatusQuery = `
SELECT active, coalesce(confirmed_flush_lsn::text, ''),
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, coalesce(wal_status, '')
  FROM pg_replication_slots WHERE slot_name = $1`
	createSlotQuery = `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`
	endSlotQuery    = `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`
	slotActiveQuery = `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`
	setUpLockQuery  = `SELECT pg_advisory_lock(hashtext('outbox-relay migrate'))`
	setUpFreeQuery  = `SELECT pg_advisory_unlock(hashtext('outbox-relay migrate'))`
)

// logicalQueries are the logical source's queries of table t.
type logicalQueries struct {
	// position reads the logical position, and logical_from.
	position string
	// olderThanSlot counts rows after the (txid, id) position $1, $2 of
	// transactions below $3 (logical_from): rows that may predate the slot.
	olderThanSlot string
	// createPublication publishes the table's inserts as publication %s.
	createPublication string
	// noteSlot records which rows may predate a slot just made ($2), or
	// one that migrate never noted, and voids an older slot's position.
	noteSlot string
}

func newLogicalQueries(t Table) logicalQueries {
	pos := t.sibling("outbox_relay_position")
	return logicalQueries{
		position: fmt.Sprintf(`
SELECT coalesce(lsn_id, 0), coalesce((lsn - '0/0'::pg_lsn)::bigint, 0), lsn IS NOT NULL, logical_from
  FROM %s WHERE outbox_table = $1`, pos),
		olderThanSlot:     fmt.Sprintf(`SELECT count(*) FROM %s WHERE (txid, id) > ($1::xid8, $2::bigint) AND txid < $3::xid8`, t.sql()),
		createPublication: `CREATE PUBLICATION %s FOR TABLE ` + t.sql() + ` WITH (publish = 'insert')`,
		// Every transaction that committed before the slot's consistent
		// point has ended, so its id is below this snapshot's xmin.
		noteSlot: fmt.Sprintf(`
UPDATE %s SET logical_from = pg_snapshot_xmin(pg_current_snapshot()),
              lsn = NULL, lsn_id = NULL, lsn_sample = NULL, lsn_sample_xmin = NULL
 WHERE outbox_table = $1 AND ($2 OR logical_from IS NULL)`, pos),
	}
}

// rowQuerier runs a query of one row: a pool or a connection.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// checkWALLevel fails with relay.ErrNotSetUp unless the server decodes
// logically.
func checkWALLevel(ctx context.Context, db rowQuerier) error {
	var level string
	if err := db.QueryRow(ctx, walLevelQuery).Scan(&level); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("%w: wal_level is %s, and RELAY_SOURCE=logical needs wal_level = logical (set it in postgresql.conf and restart the server), or use RELAY_SOURCE=poll",
			relay.ErrNotSetUp, level)
	}
	return nil
}
