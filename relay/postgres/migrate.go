package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay"
)

// Migrate applies the embedded schema.sql (outboxrelay.Schema) to the
// database at url, creating its objects in table's schema (or the first
// schema of search_path when table names none). The schema creates a
// table named outbox, so table's name must be outbox. Migrate is
// idempotent, and safe to run from several replicas at once.
func Migrate(ctx context.Context, url string, table Table) error {
	if table.Name != "outbox" {
		return fmt.Errorf("migrate creates a table named outbox, not %q", table.Name)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", Describe(url), err)
	}
	defer conn.Close(context.Background())

	// One simple-protocol batch runs as one transaction; the advisory lock
	// serializes replicas that migrate at the same moment, which IF NOT
	// EXISTS alone does not make safe.
	script := "SELECT pg_advisory_xact_lock(hashtext('outbox-relay migrate'));\n"
	if table.Schema != "" {
		script += "SET LOCAL search_path TO " + pgx.Identifier{table.Schema}.Sanitize() + ";\n"
	}
	script += outboxrelay.Schema
	if _, err := conn.PgConn().Exec(ctx, script).ReadAll(); err != nil {
		return fmt.Errorf("apply schema: %w", err)
	}
	return nil
}
