-- outbox-relay schema.
--
-- Run with: psql -v ON_ERROR_STOP=1 -f schema.sql
-- Safe to run again: every statement is idempotent. Copy it into your own
-- migration tool if you prefer; nothing here depends on the relay having run.
--
-- Objects are created unqualified, so they land in the first schema of
-- search_path (normally public). `outbox-relay migrate` applies this same
-- file, with search_path set to the schema named by RELAY_TABLE.
--
-- Requires PostgreSQL 13 or newer (xid8, pg_current_xact_id, and
-- gen_random_uuid without an extension).

SET client_min_messages = warning;

CREATE TABLE IF NOT EXISTS outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    exchange       text        NULL,
    routing_key    text        NOT NULL,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL DEFAULT 'application/json',
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    lock_keys      text        NULL DEFAULT nullif(current_setting('outbox_relay.lock_keys', true), ''),
    -- The relay reads in (txid, id) order: keyed so, the primary key is
    -- also the relay's index, and writers maintain no index of its own.
    CONSTRAINT outbox_pkey PRIMARY KEY (txid, id),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
);

-- An outbox created before ordering locks gets its lock_keys column here,
-- once: the check keeps later runs from taking the table's exclusive lock.
-- The default is not volatile, so existing rows take NULL without a rewrite.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'outbox'::regclass AND attname = 'lock_keys' AND NOT attisdropped) THEN
        ALTER TABLE outbox ADD COLUMN lock_keys text NULL
            DEFAULT nullif(current_setting('outbox_relay.lock_keys', true), '');
    END IF;
END;
$$;

COMMENT ON TABLE outbox IS
    'Transactional outbox: services insert one row per event in the same transaction as their state change; outbox-relay publishes each committed row to RabbitMQ.';
COMMENT ON COLUMN outbox.id IS
    'Row identity, published as the outbox_id header. Taken at insert, not at commit, so the relay never uses it alone as a cursor. Unique because generated; not indexed alone.';
COMMENT ON COLUMN outbox.event_id IS
    'Published as the AMQP message_id; stable across republishing, so consumers deduplicate on it.';
COMMENT ON COLUMN outbox.aggregate_type IS
    'Kind of entity the event is about, e.g. order. Published as the aggregate_type header.';
COMMENT ON COLUMN outbox.aggregate_id IS
    'Ordering key: events of one (aggregate_type, aggregate_id) are published in commit order. Published as the aggregate_id header.';
COMMENT ON COLUMN outbox.event_type IS
    'Published as the AMQP type property, e.g. OrderPlaced.';
COMMENT ON COLUMN outbox.exchange IS
    'Exchange to publish to; NULL means the relay''s RELAY_EXCHANGE.';
COMMENT ON COLUMN outbox.routing_key IS
    'AMQP routing key.';
COMMENT ON COLUMN outbox.payload IS
    'Message body, published byte for byte.';
COMMENT ON COLUMN outbox.content_type IS
    'AMQP content_type property.';
COMMENT ON COLUMN outbox.headers IS
    'A flat JSON object; each key becomes an AMQP header. Values must be strings, numbers or booleans: the relay parks a row whose values it cannot map as dead, with the reason. The relay sets aggregate_type, aggregate_id and outbox_id itself, overriding keys of those names.';
COMMENT ON COLUMN outbox.created_at IS
    'Published as the AMQP timestamp property (whole seconds).';
COMMENT ON COLUMN outbox.txid IS
    'Relay-owned: the writer''s transaction id, set by its default. The relay reads only rows whose transaction is older than every transaction still running, in (txid, id) order, so rows that commit out of id order are never skipped. Writers never set it.';
COMMENT ON COLUMN outbox.lock_keys IS
    'Relay-owned: the ordering locks (outbox_aggregate_key values, comma-separated) that the writing transaction took with outbox_lock before its first write, set by its default; NULL when it took none. The relay checks that each row''s aggregate is among them and reports rows it cannot vouch for (outbox_relay_unlocked_rows_total). Writers never set it.';
COMMENT ON INDEX outbox_pkey IS
    'Primary key on (txid, id), the publishing order: the relay reads the rows after its recorded position as a range scan of it.';
COMMENT ON INDEX outbox_event_id_key IS
    'Keeps event_id unique, so a message_id names one event.';
COMMENT ON CONSTRAINT outbox_headers_object ON outbox IS
    'Rejects at insert time headers that are not a JSON object. Values that cannot become AMQP headers (objects, arrays, null) are not checked here, which would cost writers about a fifth of an insert: the relay parks such a row as dead with the reason, and the Go library refuses them before inserting.';

-- An outbox created by an earlier version has PRIMARY KEY (id) and the
-- index outbox_txid_id_idx (txid, id) for the relay's read, and the stricter
-- check outbox_headers_flat; it keeps working as it is.

CREATE TABLE IF NOT EXISTS outbox_relay_position (
    outbox_table text        PRIMARY KEY,
    txid         xid8        NOT NULL DEFAULT '0',
    id           bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    epoch        bigint      NOT NULL DEFAULT 0,
    holder       text        NULL,
    lease_until  timestamptz NULL,
    state        text        NULL
);

COMMENT ON TABLE outbox_relay_position IS
    'Relay-owned: how far each outbox table has been published, and which replica publishes it. One row per outbox table; the relay creates its row on first start.';
COMMENT ON COLUMN outbox_relay_position.outbox_table IS
    'The outbox table this position belongs to, schema-qualified (e.g. public.outbox).';
COMMENT ON COLUMN outbox_relay_position.txid IS
    'Transaction id of the last row of the contiguous published prefix.';
COMMENT ON COLUMN outbox_relay_position.id IS
    'Row id of the last row of the contiguous published prefix. Every row at or before (txid, id) has been confirmed by the broker.';
COMMENT ON COLUMN outbox_relay_position.updated_at IS
    'When the position last moved.';
COMMENT ON COLUMN outbox_relay_position.epoch IS
    'Fencing token: bumped each time a replica takes the lease. The position is only ever written with the current epoch, so a deposed replica''s write fails.';
COMMENT ON COLUMN outbox_relay_position.holder IS
    'RELAY_REPLICA_NAME of the replica that holds the lease (publishes this table); NULL when released.';
COMMENT ON COLUMN outbox_relay_position.lease_until IS
    'Database time until which the holder''s lease is valid. The holder renews it every third of RELAY_LEASE_TIMEOUT and stops publishing well before it lapses; another replica may take over after it.';
COMMENT ON COLUMN outbox_relay_position.state IS
    'What the holder reported at its last lease renewal: publishing, or paused and why (e.g. the broker blocks publishers).';
COMMENT ON INDEX outbox_relay_position_pkey IS
    'One position per outbox table.';

-- Retention's watermark. Added with ADD COLUMN IF NOT EXISTS, so running
-- this file again upgrades a position table made by an earlier version.
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS pruned_until timestamptz NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS pruned_id bigint NULL;

COMMENT ON COLUMN outbox_relay_position.pruned_until IS
    'Retention watermark: the newest created_at among the published rows the relay deleted (RELAY_RETENTION); NULL if it never deleted any. Published rows created at or before it may be gone; rows created after it were never deleted by the relay. outbox-relay replay reports selections that reach behind it.';
COMMENT ON COLUMN outbox_relay_position.pruned_id IS
    'Retention watermark: the highest row id the relay deleted; NULL if none. Rows with higher ids were never deleted by the relay.';

-- The poll source's reading past running transactions, added the same way.
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS read_txid xid8 NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS read_id bigint NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS read_open xid8[] NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS read_open_ids bigint[] NULL;

COMMENT ON COLUMN outbox_relay_position.read_txid IS
    'Poll source: transaction id of the last row read past transactions still running (read_open); NULL when none was running. Every row at or before (read_txid, read_id) is published, except rows of the transactions in read_open.';
COMMENT ON COLUMN outbox_relay_position.read_id IS
    'Poll source: row id of that row.';
COMMENT ON COLUMN outbox_relay_position.read_open IS
    'Poll source: transactions that were still running when the relay read past them, ascending. Their rows are published as they commit; txid and id stay at the oldest of them, so that nothing behind it is ever skipped.';
COMMENT ON COLUMN outbox_relay_position.read_open_ids IS
    'Poll source: for each transaction in read_open, the id of its last row published (0 for none).';

-- The logical source's position (RELAY_SOURCE=logical), added the same way.
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS lsn pg_lsn NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS lsn_id bigint NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS lsn_sample pg_lsn NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS lsn_sample_xmin xid8 NULL;
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS logical_from xid8 NULL;

COMMENT ON COLUMN outbox_relay_position.lsn IS
    'Logical source: commit LSN of the transaction of the last row of the published prefix; NULL until the logical source records one. Rows come in commit order; every row of an earlier commit is published.';
COMMENT ON COLUMN outbox_relay_position.lsn_id IS
    'Logical source: id of that row; the rows of its transaction up to it are published.';
COMMENT ON COLUMN outbox_relay_position.lsn_sample IS
    'Logical source: the WAL insert location when txid and id last moved. Once lsn reaches it, every row below lsn_sample_xmin is published, and (lsn_sample_xmin, 0) becomes the (txid, id) position.';
COMMENT ON COLUMN outbox_relay_position.lsn_sample_xmin IS
    'Logical source: the snapshot xmin sampled with lsn_sample.';
COMMENT ON COLUMN outbox_relay_position.logical_from IS
    'Logical source: the snapshot xmin just after outbox-relay migrate created the replication slot. Rows of older transactions may predate the slot; the logical source starts only once (txid, id) is past them all.';

-- Shared work (RELAY_PARTITIONS). A table published by P > 1 partitions
-- notes P here; the row "<table>#k" (k from 0 to P - 1) is partition k's
-- position and lease, with the columns above, and the table's own row keeps
-- the published prefix of all partitions (their smallest position) for
-- retention, status and replay.
ALTER TABLE outbox_relay_position ADD COLUMN IF NOT EXISTS partitions integer NULL;

COMMENT ON COLUMN outbox_relay_position.partitions IS
    'On a table''s own row: how many partitions its aggregates are hashed into (outbox_partition); NULL or 1 when one replica publishes the whole table. Replicas refuse to start with another RELAY_PARTITIONS; outbox-relay migrate changes it while no replica runs.';

CREATE TABLE IF NOT EXISTS outbox_relay_replica (
    outbox_table text        NOT NULL,
    replica      text        NOT NULL,
    alive_until  timestamptz NOT NULL,
    PRIMARY KEY (outbox_table, replica)
);

COMMENT ON TABLE outbox_relay_replica IS
    'Relay-owned: the replicas that share a partitioned table''s work (RELAY_PARTITIONS > 1), so that each takes about its share of the partitions. A replica refreshes its row while it runs and deletes it at a clean stop.';
COMMENT ON COLUMN outbox_relay_replica.outbox_table IS
    'The outbox table (schema-qualified).';
COMMENT ON COLUMN outbox_relay_replica.replica IS
    'RELAY_REPLICA_NAME of a replica.';
COMMENT ON COLUMN outbox_relay_replica.alive_until IS
    'Database time until which the replica counts as running, unless its name''s session is gone sooner.';
COMMENT ON INDEX outbox_relay_replica_pkey IS
    'One row per table and replica name.';

CREATE TABLE IF NOT EXISTS outbox_relay_parked (
    outbox_table    text        NOT NULL,
    id              bigint      NOT NULL,
    txid            xid8        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    dead            boolean     NOT NULL DEFAULT false,
    last_error      text        NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (outbox_table, id)
);

COMMENT ON TABLE outbox_relay_parked IS
    'Relay-owned: outbox rows the relay could not publish yet, and the rows of the same aggregate waiting behind them, so that other aggregates keep flowing. The outbox row itself stays where it is.';
COMMENT ON COLUMN outbox_relay_parked.outbox_table IS
    'The outbox table the row belongs to (schema-qualified).';
COMMENT ON COLUMN outbox_relay_parked.id IS
    'The outbox row''s id.';
COMMENT ON COLUMN outbox_relay_parked.txid IS
    'The outbox row''s txid: with id, the order in which an aggregate''s parked rows are published.';
COMMENT ON COLUMN outbox_relay_parked.aggregate_type IS
    'The outbox row''s aggregate_type.';
COMMENT ON COLUMN outbox_relay_parked.aggregate_id IS
    'The outbox row''s aggregate_id: later rows of a parked aggregate wait behind its first parked row.';
COMMENT ON COLUMN outbox_relay_parked.attempts IS
    'Failed publish attempts; 0 for a row that only waits behind an earlier one of its aggregate.';
COMMENT ON COLUMN outbox_relay_parked.next_attempt_at IS
    'When the relay tries the row again (capped exponential backoff).';
COMMENT ON COLUMN outbox_relay_parked.dead IS
    'True after RELAY_MAX_ATTEMPTS failed attempts, or at once for a row that can never become a message: no longer retried until an operator runs outbox-relay dead retry (or drops it with dead drop). Its aggregate waits meanwhile, unless RELAY_DEAD_ROWS=skip.';
COMMENT ON COLUMN outbox_relay_parked.last_error IS
    'Why the last attempt failed (the broker''s reply code and text, or why the row cannot become a message).';
COMMENT ON COLUMN outbox_relay_parked.parked_at IS
    'When the row was parked.';
COMMENT ON INDEX outbox_relay_parked_pkey IS
    'One entry per outbox row.';

-- Added with ADD COLUMN IF NOT EXISTS, so running this file again upgrades a
-- parked-row table made by an earlier version.
ALTER TABLE outbox_relay_parked ADD COLUMN IF NOT EXISTS dropped boolean NOT NULL DEFAULT false;
ALTER TABLE outbox_relay_parked ADD COLUMN IF NOT EXISTS gap_reported boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN outbox_relay_parked.dropped IS
    'True once an operator discarded the dead row (outbox-relay dead drop): never published, not even by replay, and no longer holding its aggregate back. The entry is kept so that replay can tell the row from a published one.';
COMMENT ON COLUMN outbox_relay_parked.gap_reported IS
    'True once a later message of the aggregate was published with this row''s event_id in its outbox_skipped header: set for rows dropped, or dead under RELAY_DEAD_ROWS=skip, whose aggregate went on without them.';

CREATE INDEX IF NOT EXISTS outbox_relay_parked_order_idx
    ON outbox_relay_parked (outbox_table, aggregate_type, aggregate_id, txid, id);

COMMENT ON INDEX outbox_relay_parked_order_idx IS
    'Serves finding the first parked row of each aggregate, in publishing order.';

-- Ordering locks. The relay publishes in (txid, id) order, and PostgreSQL
-- assigns a transaction its id at its first write, which for UPDATE and
-- SELECT ... FOR UPDATE is before they wait for a row lock: the row lock
-- alone does not make ids follow commit order. An advisory lock assigns no
-- id, so a transaction that takes its aggregates' advisory locks before its
-- first write and holds them to COMMIT gets an id larger than that of every
-- earlier transaction of those aggregates: id order is commit order.
CREATE OR REPLACE FUNCTION outbox_aggregate_key(aggregate_type text, aggregate_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT hashtextextended(aggregate_id COLLATE "C", hashtextextended(aggregate_type COLLATE "C", 0))
$$;

COMMENT ON FUNCTION outbox_aggregate_key(text, text) IS
    'The 64-bit key of an aggregate: PostgreSQL''s hashtextextended of the id, seeded with that of the type (bytes as stored, collation "C"). outbox_lock locks it; outbox.lock_keys records it.';

CREATE OR REPLACE FUNCTION outbox_partition(aggregate_type text, aggregate_id text, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (((outbox_aggregate_key(aggregate_type, aggregate_id) % partitions) + partitions) % partitions)::integer
$$;

COMMENT ON FUNCTION outbox_partition(text, text, integer) IS
    'The partition, from 0 to partitions - 1, that publishes an aggregate''s events under RELAY_PARTITIONS = partitions: outbox_aggregate_key modulo partitions, taken non-negative.';

CREATE OR REPLACE FUNCTION outbox_lock(VARIADIC aggregates text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n    int := cardinality(aggregates);
    keys bigint[];
    key  bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'outbox_lock: this transaction has already written (it has transaction id %), so the lock cannot order its events',
                pg_current_xact_id_if_assigned()
            USING ERRCODE = '55000',
                  HINT = 'Call outbox_lock right after BEGIN, before any INSERT, UPDATE, DELETE or SELECT ... FOR UPDATE.';
    END IF;
    IF n = 2 THEN -- one aggregate, the common case: no query to plan
        keys := ARRAY[hashtextextended(aggregates[2] COLLATE "C", hashtextextended(aggregates[1] COLLATE "C", 0))];
    ELSIF n % 2 = 0 THEN
        -- In key order, so that transactions locking several aggregates
        -- cannot deadlock on each other.
        keys := ARRAY(SELECT DISTINCT hashtextextended(aggregates[2 * i] COLLATE "C", hashtextextended(aggregates[2 * i - 1] COLLATE "C", 0))
                        FROM generate_series(1, n / 2) AS i ORDER BY 1);
    END IF;
    IF keys IS NULL OR array_position(keys, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'outbox_lock: want aggregate type and id pairs, none NULL, e.g. outbox_lock(''order'', ''42'')'
            USING ERRCODE = '22023';
    END IF;
    FOREACH key IN ARRAY keys LOOP
        PERFORM pg_advisory_xact_lock(key);
    END LOOP;
    PERFORM set_config('outbox_relay.lock_keys',
        concat_ws(',', nullif(current_setting('outbox_relay.lock_keys', true), ''), array_to_string(keys, ',')), true);
END;
$$;

COMMENT ON FUNCTION outbox_lock(text[]) IS
    'Takes the ordering locks of aggregates given as type and id pairs (outbox_lock(''order'', ''42'', ...)), in key order, until the end of the transaction, and records them for the outbox rows it writes (lock_keys). Call it before the transaction''s first write, or it fails: then the events of each aggregate are published in commit order. Lock every aggregate of a transaction in one call.';

-- Optional low-latency wake-up. The relay always LISTENs on the channel
-- outbox_relay and always polls as well, so this trigger is not created by
-- default: every notifying commit takes a cluster-wide lock, which costs busy
-- writers throughput (see docs/design.md, "Wake-ups"). To opt in:
--   CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
--       FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Identical notifications within one transaction are folded into one.
    PERFORM pg_notify('outbox_relay', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION outbox_notify() IS
    'Optional statement-level trigger function: wakes outbox-relay (channel outbox_relay) when rows are inserted. At most one notification per transaction and table.';

-- Consumer inbox (package inbox). Consumers, not the relay, use these
-- tables: a consumer records each message it processed, in the same
-- transaction as the message's effects, so that a second copy of the
-- message changes nothing. They usually live in the consuming service's
-- database; creating them in a database that only publishes is harmless.
CREATE TABLE IF NOT EXISTS inbox (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

COMMENT ON TABLE inbox IS
    'Consumer inbox: one row per message a consumer processed, inserted in the same transaction as the message''s effects. A message whose row exists is a duplicate: acked without running its effects again.';
COMMENT ON COLUMN inbox.consumer IS
    'Name of the consumer that processed the message; each consumer deduplicates on its own.';
COMMENT ON COLUMN inbox.message_id IS
    'The AMQP message_id of the message (for outbox-relay, the outbox row''s event_id).';
COMMENT ON COLUMN inbox.processed_at IS
    'When the processing transaction ran. Rows are pruned by it; keep them at least the outbox retention (RELAY_RETENTION) plus the longest outage you tolerate, or late copies run again.';
COMMENT ON INDEX inbox_pkey IS
    'One row per (consumer, message_id): the insert that finds it is how a duplicate is detected.';

CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (consumer, processed_at);

COMMENT ON INDEX inbox_processed_at_idx IS
    'Serves pruning: a consumer''s rows processed before a cutoff.';

CREATE TABLE IF NOT EXISTS inbox_attempts (
    consumer   text        NOT NULL,
    message_id uuid        NOT NULL,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text        NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

COMMENT ON TABLE inbox_attempts IS
    'Consumer inbox: failed attempts of messages not yet processed, written outside the failed transaction so that the count survives its rollback and consumer restarts. A row is deleted when its message is processed or rejected, so the table holds only messages being retried.';
COMMENT ON COLUMN inbox_attempts.consumer IS
    'Name of the consumer attempting the message.';
COMMENT ON COLUMN inbox_attempts.message_id IS
    'The AMQP message_id of the message.';
COMMENT ON COLUMN inbox_attempts.attempts IS
    'Attempts so far; at the consumer''s maximum the message is rejected without requeue (to the queue''s dead-letter exchange, if any).';
COMMENT ON COLUMN inbox_attempts.last_error IS
    'Why the last failed attempt failed (truncated).';
COMMENT ON COLUMN inbox_attempts.updated_at IS
    'When an attempt was last recorded; rows untouched for long (their message vanished) are pruned by it.';
COMMENT ON INDEX inbox_attempts_pkey IS
    'One row per (consumer, message_id).';
