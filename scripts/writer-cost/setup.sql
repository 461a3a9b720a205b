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
-- pg_current_xact_id() default), no headers CHECK, no trigger.
CREATE TABLE outbox_plain (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    exchange       text        NULL,
    routing_key    text        NOT NULL,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL DEFAULT 'application/json',
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Variants D/D10: a row-level trigger whose payload differs per row, so
-- PostgreSQL cannot fold the notifications of one transaction into one.
CREATE FUNCTION outbox_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_relay', NEW.id::text);
    RETURN NULL;
END;
$$;
