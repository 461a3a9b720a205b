package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const migrateUsage = `usage: outbox-relay migrate

Applies the embedded schema.sql to RELAY_DATABASE_URL. Idempotent: safe to
run on every deploy, also from several replicas at once. The schema's objects
are created in the schema named by RELAY_TABLE (default: the first schema of
search_path, normally public); the table name itself must be outbox.
`

func migrateCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if err := parseFlags(flag.NewFlagSet("migrate", flag.ContinueOnError), args, migrateUsage, stderr); err != nil {
		return err
	}
	e, cfg, err := loadStore()
	if err != nil {
		return err
	}
	if cfg.Table.Name != "outbox" {
		return badVar("TABLE", "migrate creates a table named outbox, not %q; adapt schema.sql for another name and apply it with psql", cfg.Table.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := postgres.Migrate(ctx, e.DatabaseURL, cfg.Table); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schema applied to %s (table %s)\n", postgres.Describe(e.DatabaseURL), cfg.Table)
	return nil
}
