package postgres

import "fmt"

// adminQueries holds the operator's SQL (Admin) for one outbox table: status,
// dead rows, the hold-up probe and replay reads. None of it writes rows the
// relay publishes; retry and drop only flag parked rows for the leader.
type adminQueries struct {
	// partitionCount and partitionStatus describe a table whose work
	// replicas share (RELAY_PARTITIONS).
	partitionCount, partitionStatus string
	// status reads the position row and counts pending rows after it (range
	// scan of outbox_pkey (txid, id)): after the read cursor and the open
	// transactions' rows, when the poll source recorded them (ahead.go) and
	// they still lead to the position.
	status string
	// pendingAll counts every row, for a table the relay never started on
	// (no position row): all of it is pending.
	pendingAll string
	// Dead rows, for the dead command and status (outbox_relay_parked;
	// deadList joins the outbox on outbox_pkey (txid, id)).
	deadCount, deadList, deadRetry, deadDrop string
	// heldBack tells whether committed rows after the position wait for
	// an older transaction to end (one range probe of outbox_pkey (txid, id)).
	// Only the rows of a partitioned table do: the poll source reads an
	// unpartitioned one past running transactions (ahead.go), and the
	// logical source in commit order.
	heldBack string
	// blocker finds the oldest running or prepared transaction that
	// holds an xid: it holds back the snapshot xmin, and so publishing.
	blocker string
	// replayBounds reads the recorded position and what retention deleted
	// (primary key lookup).
	replayBounds string
	// replayRows reads the next $13 published rows of a selection after the
	// cursor ($9, $10) and at or before the position ($11, $12), in
	// publishing order: one range scan of outbox_pkey (txid, id), the
	// selection applied as a filter, parked rows skipped (their primary
	// key).
	replayRows string
	// replayCounts counts the rows of a selection after the position
	// ($9, $10; a range scan of outbox_pkey (txid, id)), and its parked rows
	// and the dead ones among them (outbox_relay_parked_pkey, then
	// outbox_pkey).
	replayCounts string
}

// replaySelection is the filter of the replay queries: $2..$8 are the
// selection (NULL matches anything), $1 the table's key.
const replaySelection = `($2::bigint IS NULL OR o.id >= $2)
   AND ($3::bigint IS NULL OR o.id <= $3)
   AND ($4::timestamptz IS NULL OR o.created_at >= $4)
   AND ($5::timestamptz IS NULL OR o.created_at < $5)
   AND ($6::text IS NULL OR o.aggregate_type = $6)
   AND ($7::text IS NULL OR o.aggregate_id = $7)
   AND ($8::text IS NULL OR o.event_type = $8)`

func newAdminQueries(t Table) adminQueries {
	outbox, pos, parked := t.sql(), t.sibling("outbox_relay_position"), t.sibling("outbox_relay_parked")
	return adminQueries{
		status: fmt.Sprintf(`
SELECT p.txid, p.id, p.updated_at, p.epoch, coalesce(p.holder, ''), coalesce(p.state, ''),
       coalesce(extract(epoch FROM p.lease_until - now()), 0)::float8,
       x.n, x.age, a.ok, coalesce(p.read_txid::text, '0')::bigint, coalesce(p.read_id, 0), coalesce(cardinality(p.read_open), 0)
  FROM %[1]s p
 CROSS JOIN LATERAL (SELECT coalesce(p.read_txid IS NOT NULL AND p.read_open[1] = p.txid AND p.read_open_ids[1] = p.id, false) AS ok) a
 CROSS JOIN LATERAL (
       SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(o.created_at)), 0)::float8 AS age
         FROM (SELECT o.created_at FROM %[2]s o
                WHERE (o.txid, o.id) > (CASE WHEN a.ok THEN p.read_txid ELSE p.txid END, CASE WHEN a.ok THEN p.read_id ELSE p.id END)
               UNION ALL
               SELECT o.created_at FROM unnest(p.read_open, p.read_open_ids) q(t, i)
                 JOIN %[2]s o ON o.txid = q.t AND o.id > q.i
                WHERE a.ok) o) x
 WHERE p.outbox_table = $1`, pos, outbox),
		partitionCount: fmt.Sprintf(`SELECT coalesce(partitions, 1) FROM %s WHERE outbox_table = $1`, pos),
		// One range scan per partition, from its position: status and the
		// metrics' sampler read it, not the relay's publishing.
		partitionStatus: fmt.Sprintf(`
SELECT k.part, p.txid, p.id, p.epoch, coalesce(p.holder, ''), coalesce(p.state, ''),
       coalesce(extract(epoch FROM p.lease_until - now()), 0)::float8, x.n, x.age
  FROM %[1]s p
 CROSS JOIN LATERAL (SELECT substr(p.outbox_table, length($1) + 2)::int AS part) k
 CROSS JOIN LATERAL (
       SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(o.created_at)), 0)::float8 AS age
         FROM %[2]s o
        WHERE (o.txid, o.id) > (p.txid, p.id) AND %[3]s(o.aggregate_type, o.aggregate_id, $2) = k.part) x
 WHERE starts_with(p.outbox_table, $1 || '#')
 ORDER BY k.part`, pos, outbox, t.sibling("outbox_partition")),
		pendingAll: fmt.Sprintf(
			`SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM %s`, outbox),
		deadCount: fmt.Sprintf(`
SELECT count(*) FILTER (WHERE dead), count(*) FILTER (WHERE NOT dead),
       count(DISTINCT (aggregate_type, aggregate_id)) FILTER (WHERE dead)
  FROM %s WHERE outbox_table = $1 AND NOT dropped`, parked),
		deadList: fmt.Sprintf(`
SELECT p.id, p.aggregate_type, p.aggregate_id, p.attempts, coalesce(p.last_error, ''),
       extract(epoch FROM now() - p.parked_at)::float8, coalesce(o.event_type, ''), coalesce(o.routing_key, ''),
       (SELECT count(*) FROM %s w WHERE w.outbox_table = p.outbox_table AND w.aggregate_type = p.aggregate_type
           AND w.aggregate_id = p.aggregate_id AND NOT w.dead AND NOT w.dropped)
  FROM %s p LEFT JOIN %s o ON o.txid = p.txid AND o.id = p.id
 WHERE p.outbox_table = $1 AND p.dead AND NOT p.dropped
 ORDER BY p.txid, p.id`, parked, parked, outbox),
		deadRetry: fmt.Sprintf(`
UPDATE %s SET dead = false, attempts = 0, next_attempt_at = now()
 WHERE outbox_table = $1 AND dead AND NOT dropped AND ($2 OR id = ANY($3))
RETURNING id`, parked),
		// A dropped row keeps its entry, so that replay never takes it
		// for a published one.
		deadDrop: fmt.Sprintf(`
UPDATE %s SET dropped = true
 WHERE outbox_table = $1 AND dead AND NOT dropped AND ($2 OR id = ANY($3))
RETURNING id`, parked),
		heldBack: fmt.Sprintf(`
SELECT EXISTS (
  SELECT 1 FROM %s o, %s p
   WHERE p.outbox_table = $1 AND coalesce(p.partitions, 1) > 1 AND (o.txid, o.id) > (p.txid, p.id)
     AND o.txid >= pg_snapshot_xmin(pg_current_snapshot()))`, outbox, pos),
		blocker: `
SELECT pid, database, age_seconds, prepared FROM (
  SELECT pid, coalesce(datname, '') AS database,
         coalesce(extract(epoch FROM now() - xact_start), 0)::float8 AS age_seconds,
         false AS prepared, age(backend_xid) AS xid_age
    FROM pg_stat_activity WHERE backend_xid IS NOT NULL
  UNION ALL
  SELECT 0, database, extract(epoch FROM now() - prepared)::float8, true, age(transaction)
    FROM pg_prepared_xacts
) x
 ORDER BY xid_age DESC
 LIMIT 1`,
		replayBounds: fmt.Sprintf(`
SELECT txid, id, pruned_until, coalesce(pruned_id, 0) FROM %s WHERE outbox_table = $1`, pos),
		replayRows: fmt.Sprintf(`
SELECT %s
  FROM %s o
 WHERE (o.txid, o.id) > ($9::xid8, $10::bigint)
   AND (o.txid, o.id) <= ($11::xid8, $12::bigint)
   AND %s
   AND NOT EXISTS (SELECT 1 FROM %s k WHERE k.outbox_table = $1 AND k.id = o.id)
 ORDER BY o.txid, o.id
 LIMIT $13`, rowColumns, outbox, replaySelection, parked),
		replayCounts: fmt.Sprintf(`
SELECT (SELECT count(*) FROM %[1]s o
         WHERE (o.txid, o.id) > ($9::xid8, $10::bigint)
           AND %[3]s),
       count(*), count(*) FILTER (WHERE k.dead)
  FROM %[2]s k JOIN %[1]s o ON o.txid = k.txid AND o.id = k.id
 WHERE k.outbox_table = $1
   AND %[3]s`, outbox, parked, replaySelection),
	}
}
