package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const migrateUsage = `usage: outbox-relay migrate

Applies the embedded schema.sql to RELAY_DATABASE_URL. Idempotent: safe to
run on every deploy, also from several replicas at once. The schema's objects
are created in the schema named by RELAY_TABLE (default: the first schema of
search_path, normally public); the table name itself must be outbox.

With RELAY_SOURCE=logical it also creates the publication of the table's
inserts and the replication slot (RELAY_PUBLICATION, RELAY_SLOT), unless they
exist; creating a slot waits for the transactions running at that moment to
end. It needs wal_level = logical and a role that may create slots.

With RELAY_PARTITIONS set it also sets how many partitions the table's work
is shared in. A change needs every replica stopped (it refuses otherwise),
and starts every partition from the prefix all old ones had published, so
rows after it are published again, in order (docs/partitions.md).
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
	if _, set := os.LookupEnv("RELAY_PARTITIONS"); set {
		change, err := postgres.SetPartitions(ctx, cfg)
		if errors.Is(err, relay.ErrNotSetUp) {
			return &usageError{err.Error()}
		}
		if err != nil {
			return err
		}
		if change.From == change.To {
			fmt.Fprintf(stdout, "partitions: %d (unchanged)\n", change.To)
		} else {
			fmt.Fprintf(stdout, "partitions: %d, was %d; every partition starts after %s\n", change.To, change.From, change.Start)
		}
	}
	if cfg.Source != postgres.SourceLogical {
		return nil
	}
	set, err := postgres.SetUpLogical(ctx, cfg)
	if errors.Is(err, relay.ErrNotSetUp) {
		return &usageError{err.Error()}
	}
	if err != nil {
		return err
	}
	made := "exists"
	if set.SlotCreated {
		made = "created"
	}
	fmt.Fprintf(stdout, "logical source: publication %s, replication slot %s (%s)\n", set.Publication, set.Slot, made)
	return nil
}
