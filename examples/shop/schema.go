package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Each service has a database of its own. Both also hold the outbox and
// inbox tables of schema.sql (`outbox-relay migrate` applies it): orders
// publishes order events and consumes inventory's replies; inventory
// consumes order events and publishes replies.

// ordersSchema is the orders service's own tables.
const ordersSchema = `
CREATE TABLE IF NOT EXISTS orders (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status     text        NOT NULL CHECK (status IN ('open', 'placed', 'confirmed', 'cancelled')),
    version    int         NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN orders.version IS 'Events written for the order so far; each event carries its own number.';
COMMENT ON COLUMN orders.reason IS 'Why a cancelled order was cancelled.';

CREATE TABLE IF NOT EXISTS order_items (
    order_id bigint NOT NULL REFERENCES orders (id),
    sku      text   NOT NULL,
    qty      int    NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
);
`

// inventorySchema is the inventory service's own tables, and its opening
// stock: little of it, so that orders regularly find a product short.
const inventorySchema = `
CREATE TABLE IF NOT EXISTS stock (
    sku      text PRIMARY KEY,
    on_hand  int  NOT NULL,
    reserved int  NOT NULL DEFAULT 0,
    CHECK (0 <= reserved AND reserved <= on_hand)
);
COMMENT ON COLUMN stock.reserved IS 'Units promised to orders: the sum of their reservations.';

CREATE TABLE IF NOT EXISTS reservations (
    order_id bigint NOT NULL,
    sku      text   NOT NULL REFERENCES stock (sku),
    qty      int    NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE IF NOT EXISTS order_view (
    order_id bigint PRIMARY KEY,
    status   text   NOT NULL,
    version  int    NOT NULL
);
COMMENT ON TABLE order_view IS 'Read model: orders as inventory knows them, built from order events only.';

CREATE TABLE IF NOT EXISTS order_view_items (
    order_id bigint NOT NULL REFERENCES order_view (order_id),
    sku      text   NOT NULL,
    qty      int    NOT NULL,
    PRIMARY KEY (order_id, sku)
);

INSERT INTO stock (sku, on_hand)
VALUES ('kettle', 20), ('mug', 20), ('spoon', 20), ('teapot', 20), ('tray', 20)
ON CONFLICT (sku) DO NOTHING;
`

// createTables applies schema to the database at url, after checking that
// schema.sql was applied there first.
func createTables(ctx context.Context, url, schema string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	var outbox, inbox *string
	if err := conn.QueryRow(ctx, `SELECT to_regclass('outbox')::text, to_regclass('inbox')::text`).Scan(&outbox, &inbox); err != nil {
		return fmt.Errorf("look for the outbox and inbox tables: %w", err)
	}
	if outbox == nil || inbox == nil {
		return errors.New("no outbox or inbox table: run `outbox-relay migrate` on it first")
	}
	// Without arguments, Exec runs the statements in one round trip.
	if _, err := conn.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	return nil
}
