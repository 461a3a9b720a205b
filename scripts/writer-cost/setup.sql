-- Benchmark-only objects, applied after the repository's schema.sql.
-- (The outbox table, its key, CHECK and outbox_notify() come from schema.sql.)

-- The business table each writer transaction changes (one upsert per transaction).
CREATE TABLE orders (
    id         bigint      PRIMARY KEY,
    status     text        NOT NULL,
    amount     bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Variant A's outbox: schema.sql's outbox minus everything the relay adds:
-- keyed by id instead of (txid, id), no txid xid8 column (so no
-- pg_current_xact_id() default), no lock_keys column (so no
-- current_setting() default), no headers CHECK, no trigger. LIKE copies the
-- columns with their types, NOT NULL, defaults and identity, and none of the
-- keys, checks or triggers; the dropped columns stay behind as NULLs that
-- take no room in a row that already has a NULL (exchange).
CREATE TABLE outbox_plain (LIKE outbox INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE outbox_plain
    DROP COLUMN txid,
    DROP COLUMN lock_keys,
    ADD PRIMARY KEY (id),
    ADD UNIQUE (event_id);

-- Variants D/D10: a row-level trigger whose payload differs per row, so
-- PostgreSQL cannot fold the notifications of one transaction into one.
CREATE FUNCTION outbox_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_relay', NEW.id::text);
    RETURN NULL;
END;
$$;
