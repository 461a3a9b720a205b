package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// TestMigrate: the schema applies to an empty database, again over itself,
// and into a named schema; a relay starts on the result.
func TestMigrate(t *testing.T) {
	t.Parallel()
	url := testenv.EmptyDatabase(t)
	ctx := context.Background()
	for range 2 {
		if err := Migrate(ctx, url, Table{Name: "outbox"}); err != nil {
			t.Fatalf("Migrate = %v", err)
		}
	}
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Start(ctx); err != nil {
		t.Fatalf("Start after Migrate = %v", err)
	}

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA svc`); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, url, Table{Schema: "svc", Name: "outbox"}); err != nil {
		t.Fatalf("Migrate svc.outbox = %v", err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('svc.outbox') IS NOT NULL AND to_regclass('svc.outbox_relay_position') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("svc.outbox not created (%v)", err)
	}

	if err := Migrate(ctx, url, Table{Name: "events"}); err == nil || !strings.Contains(err.Error(), `not "events"`) {
		t.Fatalf("Migrate of a table named events = %v, want it refused", err)
	}
}
