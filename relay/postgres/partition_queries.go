package postgres

import (
	"fmt"
	"strings"
)

// partitionQueries holds the SQL of a partitioned table's share of the
// work (partition.go): partition k's position and lease live in the
// position row named partitionKey(table, k), with the columns of the
// table's own row.
type partitionQueries struct {
	// partitions reads the table's partition count (NULL: 1); setPartitions
	// partitions a table that was never published and whose lease is
	// free; ensureParts creates the partition rows missing, at the
	// table's position.
	partitions, setPartitions, ensureParts string
	// beat refreshes this replica's row in outbox_relay_replica; live
	// lists the replicas whose rows are fresh and whose name is held by a
	// session; leave deletes this replica's row.
	beat, live, leave string
	// states reads each partition's holder, whether its lease is valid,
	// its epoch, and whether its holder's session is gone.
	states string
	// take takes partition $1's lease as acquire does, only while the
	// table is partitioned $6 ways ($5 the table's key).
	take string
	// renew, record and release work on every partition held: the keys
	// $1 and their epochs $2. record moves each partition's position to
	// ($3, $4) unless it is already past it.
	renew, record, release string
	// releaseOwn releases partitions this replica's name holds that it
	// did not take back (left from an earlier term).
	releaseOwn string
	// prefix moves the table's own row to the smallest partition
	// position: the prefix that every partition has published.
	prefix string
	// xmin is the server's snapshot xmin: every transaction below it has
	// ended (idleAdvance).
	xmin string
	// SetPartitions': lockForChange locks the table's row and reads its
	// count and the holders of live leases on it or its partitions;
	// changeStart reads the prefix of the old partitions $2 and an epoch
	// past every one used on the table's rows; deadAfter counts the dead
	// and dropped rows after ($2, $3); change moves the table's row to the
	// prefix, the new count and the epoch, and deletes the old partition
	// rows.
	lockForChange, changeStart, deadAfter, change string
}

// nameFreeSQL is the SQL boolean that no session holds the name lock of
// replica holder (a column or parameter) of the table $1: the two keys of
// nameLockArgs.
func nameFreeSQL(holder string) string {
	lock := fmt.Sprintf("hashtext('outbox-relay replica'), hashtext($1 || ' ' || %s)", holder)
	return fmt.Sprintf("(CASE WHEN pg_try_advisory_lock(%[1]s) THEN pg_advisory_unlock(%[1]s) ELSE false END)", lock)
}

func newPartitionQueries(t Table) partitionQueries {
	pos, members := t.sibling("outbox_relay_position"), t.sibling("outbox_relay_replica")
	return partitionQueries{
		partitions: fmt.Sprintf(`SELECT coalesce(partitions, 1) FROM %s WHERE outbox_table = $1`, pos),
		setPartitions: fmt.Sprintf(`
UPDATE %s SET partitions = $2
 WHERE outbox_table = $1 AND coalesce(partitions, 1) = 1 AND txid = '0' AND id = 0
   AND (holder IS NULL OR lease_until IS NULL OR lease_until < now())`, pos),
		// A new partition row starts at the table's epoch, which is past
		// every epoch of partition rows deleted before (SetPartitions):
		// a fencing token is never used twice for one key.
		ensureParts: fmt.Sprintf(`
INSERT INTO %[1]s (outbox_table, txid, id, epoch)
SELECT $1 || '#' || k, t.txid, t.id, t.epoch FROM %[1]s t, generate_series(0, $2 - 1) k
 WHERE t.outbox_table = $1
ON CONFLICT (outbox_table) DO NOTHING`, pos),
		beat: fmt.Sprintf(`
INSERT INTO %s (outbox_table, replica, alive_until) VALUES ($1, $2, now() + $3 * interval '1 millisecond')
ON CONFLICT (outbox_table, replica) DO UPDATE SET alive_until = excluded.alive_until`, members),
		live: fmt.Sprintf(`
SELECT replica FROM %s
 WHERE outbox_table = $1 AND alive_until > now() AND (replica = $2 OR NOT %s)
 ORDER BY replica`, members, nameFreeSQL("replica")),
		leave: fmt.Sprintf(`DELETE FROM %s WHERE outbox_table = $1 AND replica = $2`, members),
		// Each holder's name lock is tried once, however many partitions
		// it holds.
		states: fmt.Sprintf(`
WITH g AS MATERIALIZED (
  SELECT d.holder, %[1]s AS gone
    FROM (SELECT DISTINCT holder FROM %[2]s WHERE outbox_table = ANY($3) AND holder IS NOT NULL AND holder <> $2) d
)
SELECT p.outbox_table, coalesce(p.holder, ''), coalesce(p.lease_until > now(), false), p.epoch, coalesce(g.gone, false)
  FROM %[2]s p LEFT JOIN g ON g.holder = p.holder
 WHERE p.outbox_table = ANY($3)`, nameFreeSQL("d.holder"), pos),
		take: fmt.Sprintf(`
UPDATE %[1]s SET epoch = epoch + 1, holder = $2, lease_until = now() + $3 * interval '1 millisecond',
       state = 'publishing'
 WHERE outbox_table = $1
   AND (holder IS NULL OR lease_until IS NULL OR lease_until < now() OR epoch = $4)
   AND EXISTS (SELECT 1 FROM %[1]s t WHERE t.outbox_table = $5 AND t.partitions = $6)
RETURNING epoch, txid, id`, pos),
		renew: fmt.Sprintf(`
UPDATE %s p SET lease_until = now() + $4 * interval '1 millisecond', state = $5
  FROM unnest($1::text[], $2::bigint[]) h(key, epoch)
 WHERE p.outbox_table = h.key AND p.epoch = h.epoch AND p.holder = $3`, pos),
		record: fmt.Sprintf(`
UPDATE %s p
   SET txid = CASE WHEN (p.txid, p.id) < ($3::xid8, $4::bigint) THEN $3::xid8 ELSE p.txid END,
       id = CASE WHEN (p.txid, p.id) < ($3::xid8, $4::bigint) THEN $4::bigint ELSE p.id END,
       updated_at = now()
  FROM unnest($1::text[], $2::bigint[]) h(key, epoch)
 WHERE p.outbox_table = h.key AND p.epoch = h.epoch`, pos),
		release: fmt.Sprintf(`
UPDATE %s p SET holder = NULL, lease_until = NULL, state = NULL
  FROM unnest($1::text[], $2::bigint[]) h(key, epoch)
 WHERE p.outbox_table = h.key AND p.epoch = h.epoch AND p.holder = $3`, pos),
		releaseOwn: fmt.Sprintf(`
UPDATE %s SET holder = NULL, lease_until = NULL, state = NULL
 WHERE outbox_table = ANY($1) AND holder = $2`, pos),
		xmin: `SELECT pg_snapshot_xmin(pg_current_snapshot())`,
		lockForChange: fmt.Sprintf(`
SELECT coalesce(partitions, 1), coalesce((SELECT string_agg(DISTINCT holder, ', ') FROM %[1]s
                   WHERE (outbox_table = $1 OR starts_with(outbox_table, $1 || '#')) AND holder IS NOT NULL AND lease_until > now()), '')
  FROM %[1]s WHERE outbox_table = $1 FOR UPDATE`, pos),
		changeStart: fmt.Sprintf(`
SELECT (SELECT txid FROM %[1]s WHERE outbox_table = $1 OR outbox_table = ANY($2) ORDER BY txid, id LIMIT 1),
       (SELECT id FROM %[1]s WHERE outbox_table = $1 OR outbox_table = ANY($2) ORDER BY txid, id LIMIT 1),
       (SELECT max(epoch) + 1 FROM %[1]s WHERE outbox_table = $1 OR starts_with(outbox_table, $1 || '#'))`, pos),
		deadAfter: fmt.Sprintf(`
SELECT count(*) FROM %s WHERE outbox_table = $1 AND (dead OR dropped) AND (txid, id) > ($2::xid8, $3::bigint)`, t.sibling("outbox_relay_parked")),
		change: fmt.Sprintf(`
WITH gone AS (DELETE FROM %[1]s WHERE starts_with(outbox_table, $1 || '#'))
UPDATE %[1]s SET txid = $2::xid8, id = $3, partitions = $4, epoch = $5, holder = NULL, lease_until = NULL, state = NULL, updated_at = now(),
       read_txid = NULL, read_id = NULL, read_open = NULL, read_open_ids = NULL
 WHERE outbox_table = $1`, pos),
		prefix: fmt.Sprintf(`
UPDATE %[1]s t SET txid = m.txid, id = m.id, updated_at = now(),
       read_txid = NULL, read_id = NULL, read_open = NULL, read_open_ids = NULL
  FROM (SELECT txid, id FROM %[1]s WHERE outbox_table = ANY($2) ORDER BY txid, id LIMIT 1) m
 WHERE t.outbox_table = $1 AND (t.txid, t.id) < (m.txid, m.id)`, pos),
	}
}

// partitionFilters rewrites q's read and parked-row queries for a table
// partitioned among replicas: the read takes only rows of partitions held
// and after each one's position, the parked-row queries only aggregates of
// partitions held.
func partitionFilters(q *queries, t Table) {
	part := func(alias string) string {
		if alias != "" {
			alias += "."
		}
		return fmt.Sprintf("%s(%saggregate_type, %saggregate_id, ", t.sibling("outbox_partition"), alias, alias)
	}
	// Partition k's floor is element k + 1 of $5 and $6, NULL when it is
	// not held: no row of it is read then.
	q.read = mustReplace(q.read, "ORDER BY o.txid, o.id", fmt.Sprintf(
		`AND (o.txid, o.id) > (($5::text[])[%[1]s$7) + 1]::xid8, ($6::bigint[])[%[1]s$7) + 1])
 ORDER BY o.txid, o.id`, part("o")))
	held := func(alias, list, n string) string {
		return fmt.Sprintf(" AND %s%s) = ANY(%s::int[])", part(alias), n, list)
	}
	q.parkedAggs += held("", "$3", "$4")
	q.skipped = mustReplace(q.skipped, "\n ORDER BY k.txid, k.id", held("k", "$3", "$4")+"\n ORDER BY k.txid, k.id")
	q.dueHeads = mustReplace(q.dueHeads, "\n         ORDER BY aggregate_type, aggregate_id, txid, id) h",
		held("", "$5", "$6")+"\n         ORDER BY aggregate_type, aggregate_id, txid, id) h")
}

// mustReplace replaces old in s once; a query that lacks old is a bug in
// this file, found by any test that opens a partitioned store.
func mustReplace(s, old, new string) string {
	if !strings.Contains(s, old) {
		panic("postgres: partition filter: query lacks " + old)
	}
	return strings.Replace(s, old, new, 1)
}
