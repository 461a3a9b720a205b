package postgres

import (
	"fmt"
	"strings"
)

// queries holds the SQL of the relay's port (Store) for one outbox table;
// the operator's SQL is in admin_queries.go. Transaction ids
// go to PostgreSQL as text and are cast to xid8, which works in every pgx
// query mode, PgBouncer's simple protocol included.
type queries struct {
	// read relies on outbox_pkey (txid, id), or outbox_txid_id_idx in an
	// outbox made by an earlier version: both conditions are index
	// conditions of one range scan, already in ORDER BY order.
	read string
	// readAhead and readAheadOpen read past running transactions (ahead.go;
	// the poll source of an unpartitioned table): the rows after the cursor
	// ($1, $2) whose transactions committed, one range scan of outbox_pkey
	// as read's, each row with the transactions still running between the
	// cursor and it (k_running, only for a row at or above the snapshot's
	// xmin). readAheadOpen also reads first the rows of the open
	// transactions ($5 txids, $6 ids: one index probe each) that committed,
	// and tells which of them still run (k_still). Both take the running
	// transactions from the statement's own snapshot, the one its rows are
	// read in.
	readAhead, readAheadOpen string
	// readState reads the cursor and open transactions recorded beside the
	// position (primary key lookup).
	readState string
	// aggregateKey computes an aggregate's key on the server.
	aggregateKey string
	// ensurePosition creates the table's position row if missing.
	ensurePosition string
	// position reads the recorded position (primary key lookup).
	position string
	// record stores a position, only under the current lease epoch
	// (primary key update): a deposed replica's write matches no row, nor
	// does any once the table is partitioned (partition.go; acquire and
	// renew check that too). The logical source's ($2 the commit LSN, $3
	// the row id) also moves the (txid, id) position, below which every
	// row is published, by the sample it took at its last move (see
	// logicalRecord).
	record string
	// recordAhead is record for a reading state with open transactions
	// (ahead.go): the cursor ($2, $3) and the open ones ($5 txids, $6
	// ids). The open transactions that have ended with every row read are
	// dropped first (one index probe each); the position is the oldest
	// left, or the cursor. It returns the open transactions left.
	recordAhead string
	// settle is recordAhead over the recorded state itself (the same
	// cursor and open transactions, guarded: a newer record wins), for an
	// idle relay; it returns the open transactions left.
	settle string
	// recordIdle is the logical source's record of an idle position ($3
	// 0), unless a later one is recorded.
	recordIdle string
	// acquire takes the lease if it is free or lapsed, or if it is still
	// in term $4, whose holder is gone; it bumps the epoch and returns the
	// epoch and the position.
	acquire string
	// leaseHolder describes who holds the lease and in which term.
	leaseHolder string
	// lockName takes a replica name's session lock; nameFree tells, in
	// one statement, whether any session holds a name's lock.
	lockName, nameFree string
	// renew extends our lease, if it is still ours.
	renew string
	// release gives our lease up at a clean stop.
	release string
	// horizon returns the next transaction id to be assigned and the
	// newest txid in the table (one index-only probe of
	// outbox_pkey (txid, id); max(xid8) needs PostgreSQL 15), to detect a
	// restored database.
	horizon string
	// Parked rows (outbox_relay_parked; the order index serves the heads).
	// A parked row holds its aggregate back (holding below) unless it was
	// dropped, or is dead and the policy ($n skip) lets dead rows go.
	// unpark and failed are fenced by the epoch of the position row that
	// holds the aggregate's lease: the table's, or its partition's.
	parkedAggs, park, dueHeads, unpark, reported, remaining, failed, skipped string
}

// newQueries returns the queries of table t. lockKeys says whether it has
// the lock_keys column; without it the read returns NULL in its place.
// logical selects the logical source's position queries.
func newQueries(t Table, lockKeys, logical bool) queries {
	outbox, pos, parked := t.sql(), t.sibling("outbox_relay_position"), t.sibling("outbox_relay_parked")
	lockCol := "NULL::text"
	if lockKeys {
		lockCol = "o.lock_keys"
	}
	q := queries{
		read: fmt.Sprintf(`
SELECT %s, octet_length(o.payload), %s
  FROM %s o
 WHERE (o.txid, o.id) > ($1::xid8, $2::bigint)
   AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY o.txid, o.id
 LIMIT $3`, lockCol, readColumns, outbox),
		readAhead:     readAheadQuery(outbox, lockCol, false),
		readAheadOpen: readAheadQuery(outbox, lockCol, true),
		readState: fmt.Sprintf(`
SELECT read_txid::text, read_id, read_open::text[], read_open_ids FROM %s WHERE outbox_table = $1`, pos),
		aggregateKey: fmt.Sprintf(`SELECT %s($1, $2)`, t.sibling("outbox_aggregate_key")),
		ensurePosition: fmt.Sprintf(`
INSERT INTO %s (outbox_table) VALUES ($1) ON CONFLICT (outbox_table) DO NOTHING`, pos),
		position: fmt.Sprintf(`
SELECT txid, id FROM %s WHERE outbox_table = $1`, pos),
		record: fmt.Sprintf(`
UPDATE %s SET txid = $2::xid8, id = $3, updated_at = now(),
       read_txid = NULL, read_id = NULL, read_open = NULL, read_open_ids = NULL
 WHERE outbox_table = $1 AND epoch = $4 AND coalesce(partitions, 1) = 1`, pos),
		recordAhead: fmt.Sprintf(`
WITH k AS (
  SELECT q.t, q.i, q.n FROM unnest($5::text[]::xid8[], $6::bigint[]) WITH ORDINALITY q(t, i, n)
   WHERE NOT pg_visible_in_snapshot(q.t, pg_current_snapshot())
      OR EXISTS (SELECT 1 FROM %s o WHERE o.txid = q.t AND o.id > q.i)),
f AS (SELECT t, i FROM k ORDER BY n LIMIT 1)
UPDATE %s SET txid = coalesce((SELECT t FROM f), $2::xid8), id = coalesce((SELECT i FROM f), $3), updated_at = now(),
       read_txid = CASE WHEN EXISTS (SELECT 1 FROM k) THEN $2::xid8 END,
       read_id = CASE WHEN EXISTS (SELECT 1 FROM k) THEN $3 END,
       read_open = (SELECT array_agg(t ORDER BY n) FROM k),
       read_open_ids = (SELECT array_agg(i ORDER BY n) FROM k)
 WHERE outbox_table = $1 AND epoch = $4 AND coalesce(partitions, 1) = 1`, outbox, pos),
		acquire: fmt.Sprintf(`
UPDATE %s SET epoch = epoch + 1, holder = $2, lease_until = now() + $3 * interval '1 millisecond',
       state = 'publishing'
 WHERE outbox_table = $1
   AND (holder IS NULL OR lease_until IS NULL OR lease_until < now() OR epoch = $4)
   AND coalesce(partitions, 1) = 1
RETURNING epoch, txid, id, 0::bigint`, pos),
		leaseHolder: fmt.Sprintf(`
SELECT coalesce(holder, ''), coalesce(extract(epoch FROM lease_until - now()), 0)::float8, epoch
  FROM %s WHERE outbox_table = $1`, pos),
		lockName: `SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))`,
		nameFree: `
SELECT CASE WHEN pg_try_advisory_lock(hashtext($1), hashtext($2))
            THEN pg_advisory_unlock(hashtext($1), hashtext($2)) ELSE false END`,
		renew: fmt.Sprintf(`
UPDATE %s SET lease_until = now() + $4 * interval '1 millisecond', state = $5
 WHERE outbox_table = $1 AND epoch = $2 AND holder = $3 AND coalesce(partitions, 1) = 1`, pos),
		release: fmt.Sprintf(`
UPDATE %s SET holder = NULL, lease_until = NULL, state = NULL
 WHERE outbox_table = $1 AND epoch = $2 AND holder = $3`, pos),
		horizon: fmt.Sprintf(`
SELECT pg_snapshot_xmax(pg_current_snapshot()),
       coalesce((SELECT txid FROM %s ORDER BY txid DESC LIMIT 1), '0'::xid8)`, outbox),
		parkedAggs: fmt.Sprintf(`
SELECT DISTINCT aggregate_type, aggregate_id FROM %s WHERE outbox_table = $1 AND %s`, parked, holding("$2")),
		park: fmt.Sprintf(`
INSERT INTO %s (outbox_table, id, txid, aggregate_type, aggregate_id, attempts, last_error, next_attempt_at, dead)
VALUES ($1, $2, $3::xid8, $4, $5, $6, nullif($7, ''), now() + $8 * interval '1 millisecond', $9)
ON CONFLICT (outbox_table, id) DO NOTHING`, parked),
		dueHeads: fmt.Sprintf(`
SELECT h.attempts, coalesce(g.ids, '{}'), coalesce(g.events, '{}'), octet_length(o.payload), %[1]s
  FROM (SELECT DISTINCT ON (aggregate_type, aggregate_id) txid, id, attempts, dead, next_attempt_at, aggregate_type, aggregate_id
          FROM %[2]s WHERE outbox_table = $1 AND %[4]s
         ORDER BY aggregate_type, aggregate_id, txid, id) h
  JOIN %[3]s o ON o.txid = h.txid AND o.id = h.id
  LEFT JOIN LATERAL (
       SELECT array_agg(k.id ORDER BY k.txid, k.id) AS ids, array_agg(e.event_id::text ORDER BY k.txid, k.id) AS events
         FROM %[2]s k JOIN %[3]s e ON e.txid = k.txid AND e.id = k.id
        WHERE k.outbox_table = $1 AND k.aggregate_type = h.aggregate_type AND k.aggregate_id = h.aggregate_id
          AND NOT k.gap_reported AND NOT %[5]s) g ON true
 WHERE NOT h.dead AND h.next_attempt_at <= now()
 LIMIT $2`, readColumns, parked, outbox, holding("$3"), holdingAs("k", "$3")),
		unpark: fmt.Sprintf(`
DELETE FROM %s WHERE outbox_table = $1 AND id = $2
   AND EXISTS (SELECT 1 FROM %s WHERE outbox_table = $4 AND epoch = $3)`, parked, pos),
		reported: fmt.Sprintf(`
UPDATE %s SET gap_reported = true WHERE outbox_table = $1 AND id = ANY($2)`, parked),
		remaining: fmt.Sprintf(`
SELECT count(*) FROM %s WHERE outbox_table = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND %s`, parked, holding("$4")),
		failed: fmt.Sprintf(`
UPDATE %s SET attempts = $3, last_error = $4, next_attempt_at = now() + $5 * interval '1 millisecond', dead = $6
 WHERE outbox_table = $1 AND id = $2
   AND EXISTS (SELECT 1 FROM %s WHERE outbox_table = $8 AND epoch = $7)`, parked, pos),
		skipped: fmt.Sprintf(`
SELECT k.aggregate_type, k.aggregate_id, k.id, e.event_id::text
  FROM %[1]s k JOIN %[2]s e ON e.txid = k.txid AND e.id = k.id
 WHERE k.outbox_table = $1 AND NOT k.gap_reported AND NOT %[3]s
 ORDER BY k.txid, k.id`, parked, outbox, holdingAs("k", "$2")),
	}
	returning := `
RETURNING coalesce(read_open::text[], '{}'), coalesce(read_open_ids, '{}')`
	q.settle = q.recordAhead + `
   AND read_txid = $2::xid8 AND read_id = $3 AND read_open = $5::text[]::xid8[] AND read_open_ids = $6` + returning
	q.recordAhead += returning
	if logical {
		q.record, q.recordIdle = logicalRecord(pos), logicalRecord(pos)+" AND (p.lsn IS NULL OR p.lsn < x.lsn)"
		q.acquire = strings.Replace(q.acquire, "RETURNING epoch, txid, id, 0::bigint",
			"RETURNING epoch, '0'::xid8, coalesce(lsn_id, 0), coalesce((lsn - '0/0'::pg_lsn)::bigint, 0)", 1)
	}
	return q
}

// readAheadQuery returns readAhead, or readAheadOpen when open is set.
func readAheadQuery(outbox, lockCol string, open bool) string {
	after := fmt.Sprintf(`
SELECT %s AS k_lock, octet_length(o.payload) AS k_size,
       CASE WHEN o.txid >= (SELECT pg_snapshot_xmin(pg_current_snapshot())) THEN
            (SELECT string_agg(x::text, ',' ORDER BY x) FROM pg_snapshot_xip(pg_current_snapshot()) x
              WHERE x >= $1::xid8 AND x < o.txid) END AS k_running,
       {still} AS k_still, %s
  FROM %s o
 WHERE (o.txid, o.id) > ($1::xid8, $2::bigint)
 ORDER BY o.txid, o.id
 LIMIT $3`, lockCol, readColumns, outbox)
	// {still} is filled in last: the table's name may hold a %.
	if !open {
		return strings.Replace(after, "{still}", "NULL::text", 1)
	}
	still := `(SELECT string_agg(t::text, ',' ORDER BY t) FROM unnest($5::text[]::xid8[]) t
         WHERE NOT pg_visible_in_snapshot(t, pg_current_snapshot()))`
	// The open transactions' ids are below the cursor, so their rows
	// come first; the outer LIMIT keeps the order of the two parts.
	return fmt.Sprintf(`
SELECT * FROM (
  (SELECT %s AS k_lock, octet_length(o.payload) AS k_size, NULL::text AS k_running, %s AS k_still, %s
     FROM unnest($5::text[]::xid8[], $6::bigint[]) p(t, i)
     JOIN %s o ON o.txid = p.t AND o.id > p.i
    ORDER BY o.txid, o.id
    LIMIT $3)
  UNION ALL
  (%s)) r
 LIMIT $3`, lockCol, still, readColumns, outbox, strings.Replace(after, "{still}", still, 1))
}

// logicalRecord is the logical source's record in position table pos.
// Rows come in commit order, not in (txid, id) order, so the (txid, id)
// position, which retention and the poll source rely on, moves by
// samples: each move notes the server's WAL insert location W and the xmin
// X of its snapshot. Every transaction below X had finished, its commit
// before W, so once a recorded commit LSN reaches W, every row below X is
// published (or parked), and (X, 0) becomes the (txid, id) position; a new
// sample is taken then.
func logicalRecord(pos string) string {
	return fmt.Sprintf(`
UPDATE %s p
   SET lsn = x.lsn, lsn_id = $3, updated_at = now(),
       txid = CASE WHEN x.due AND p.lsn_sample_xmin > p.txid THEN p.lsn_sample_xmin ELSE p.txid END,
       id = CASE WHEN x.due AND p.lsn_sample_xmin > p.txid THEN 0 ELSE p.id END,
       lsn_sample = CASE WHEN x.fresh THEN pg_current_wal_insert_lsn() ELSE p.lsn_sample END,
       lsn_sample_xmin = CASE WHEN x.fresh THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE p.lsn_sample_xmin END
  FROM (SELECT l.lsn, s.lsn_sample <= l.lsn AS due, s.lsn_sample IS NULL OR s.lsn_sample <= l.lsn AS fresh
          FROM (SELECT '0/0'::pg_lsn + $2::numeric AS lsn) l, %s s WHERE s.outbox_table = $1) x
 WHERE p.outbox_table = $1 AND p.epoch = $4 AND coalesce(p.partitions, 1) = 1`, pos, pos)
}

// holding is the condition that an outbox_relay_parked row holds its
// aggregate back, given skip, the SQL boolean that dead rows let it go.
func holding(skip string) string { return holdingAs("", skip) }

// holdingAs is holding for the table aliased alias.
func holdingAs(alias, skip string) string {
	if alias != "" {
		alias += "."
	}
	return fmt.Sprintf("(NOT %[1]sdropped AND NOT (%[1]sdead AND %[2]s))", alias, skip)
}

// resolveQuery names the table $1 as schema.name, or NULL if it does not
// exist. It and columnsQuery name no table of their own, so they are
// constants: Store and Admin share them.
const resolveQuery = `
SELECT (SELECT n.nspname || '.' || c.relname
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass($1))`

// columnsQuery tells whether the table $1 has the relay's txid column and
// the lock_keys column of ordering locks.
const columnsQuery = `
SELECT count(*) FILTER (WHERE attname = 'txid' AND atttypid = 'xid8'::regtype) = 1,
       count(*) FILTER (WHERE attname = 'lock_keys' AND atttypid = 'text'::regtype) = 1
  FROM pg_attribute
 WHERE attrelid = to_regclass($1) AND attname IN ('txid', 'lock_keys') AND NOT attisdropped`

// pruneQuery is retention's (retention.go) delete of one batch of
// published rows of table t, fenced on the lease: the position row $8 (the
// table's, or partition 0's of a partitioned table) must name this
// replica, its epoch and an unexpired lease, or the batch is empty. The
// batch is the next $6 rows after the cursor ($4, $5) and at or before the
// recorded position (the table's, which for a partitioned table is the
// prefix every partition published): both bounds are index conditions of one
// range scan of outbox_pkey (txid, id) (the position comes in as scalar
// subqueries so the planner can use it as a bound, not a join filter). Of
// those, rows older than $7 ms and not parked are deleted by their
// (txid, id); the newest created_at and the highest id deleted are
// recorded in the same statement. It returns how many rows it deleted and
// looked at, and the last row looked at (the next cursor) and whether it
// was too young. No row at all means nothing was left to look at.
func pruneQuery(t Table) string {
	outbox, pos, parked := t.sql(), t.sibling("outbox_relay_position"), t.sibling("outbox_relay_parked")
	return fmt.Sprintf(`
WITH lease AS MATERIALIZED (
  SELECT t.txid, t.id FROM %[2]s t
   WHERE t.outbox_table = $1
     AND EXISTS (SELECT 1 FROM %[2]s l WHERE l.outbox_table = $8 AND l.holder = $2 AND l.epoch = $3 AND l.lease_until > now())
), batch AS MATERIALIZED (
  SELECT o.id, o.txid, o.created_at
    FROM %[1]s o
   WHERE (o.txid, o.id) > ($4::xid8, $5::bigint)
     AND (o.txid, o.id) <= ((SELECT txid FROM lease), (SELECT id FROM lease))
   ORDER BY o.txid, o.id
   LIMIT $6
), gone AS (
  DELETE FROM %[1]s o
   WHERE (o.txid, o.id) IN (
           SELECT b.txid, b.id FROM batch b
            WHERE b.created_at < now() - $7 * interval '1 millisecond'
              AND NOT EXISTS (SELECT 1 FROM %[3]s k WHERE k.outbox_table = $1 AND k.id = b.id))
  RETURNING o.id, o.created_at
), mark AS (
  UPDATE %[2]s SET pruned_until = greatest(pruned_until, g.until), pruned_id = greatest(pruned_id, g.max_id)
    FROM (SELECT max(created_at) AS until, max(id) AS max_id FROM gone) g
   WHERE outbox_table = $1 AND g.max_id IS NOT NULL
)
SELECT (SELECT count(*) FROM gone)::int, (SELECT count(*) FROM batch)::int,
       l.txid, l.id, l.created_at >= now() - $7 * interval '1 millisecond'
  FROM (SELECT txid, id, created_at FROM batch ORDER BY txid DESC, id DESC LIMIT 1) l`, outbox, pos, parked)
}
