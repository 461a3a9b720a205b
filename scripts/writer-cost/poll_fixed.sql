-- The relay's read every 1 ms from a fixed position (-D ptx=... -D pid=...,
-- taken just before the run). Once 1000 rows have committed after it, every
-- read returns a full 1000-row batch: a relay that has fallen behind.
SELECT id FROM outbox
WHERE (txid, id) > (CAST(CAST(:ptx AS text) AS xid8), CAST(:pid AS bigint))
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, id
LIMIT 1000;
\sleep 1 ms
