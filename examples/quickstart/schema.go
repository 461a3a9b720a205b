package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// schemaSQL creates the sample service's own tables. The outbox table itself
// comes from `outbox-relay migrate` (or schema.sql), not from here.
const schemaSQL = `
CREATE TABLE IF NOT EXISTS orders (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status      text        NOT NULL,
    seq         int         NOT NULL,
    total_cents bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN orders.seq IS 'Events committed for this order so far; each event carries its own number.';

CREATE TABLE IF NOT EXISTS demo_rolled_back (
    event_id    uuid        PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE demo_rolled_back IS 'Demo bookkeeping, written after a deliberate rollback: events that must never be delivered.';
`

// createTables creates the sample service's tables in the database at url,
// after checking that the outbox table is there.
func createTables(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.Background())
	var outbox *string
	if err := conn.QueryRow(ctx, `SELECT to_regclass('outbox')::text`).Scan(&outbox); err != nil {
		return fmt.Errorf("look for the outbox table: %w", err)
	}
	if outbox == nil {
		return errors.New("no outbox table: run `outbox-relay migrate` first")
	}
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	return nil
}
