-- The relay's read every 1 ms, as a caught-up relay does it: each read starts
-- after the last row the previous read returned (position kept in :ptx/:pid,
-- seeded with -D ptx=... -D pid=...), so it reads only the rows committed since.
WITH batch AS (
    SELECT txid, id FROM outbox
    WHERE (txid, id) > (CAST(CAST(:ptx AS text) AS xid8), CAST(:pid AS bigint))
      AND txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY txid, id
    LIMIT 1000
)
SELECT coalesce((SELECT CAST(CAST(txid AS text) AS bigint) FROM batch ORDER BY txid DESC, id DESC LIMIT 1), CAST(:ptx AS bigint)) AS ptx,
       coalesce((SELECT id FROM batch ORDER BY txid DESC, id DESC LIMIT 1), CAST(:pid AS bigint)) AS pid
\gset
\sleep 1 ms
