package testenv

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay"
)

// Database creates a fresh database with the outbox schema
// (outboxrelay.Schema) applied, on the PostgreSQL server named by
// RELAY_TEST_DATABASE_URL, and returns its URL. The database is dropped when
// the test and its subtests have finished, closing any connections still
// open to it.
func Database(t testing.TB) string {
	t.Helper()
	dbURL := EmptyDatabase(t)
	applySchema(t, dbURL)
	return dbURL
}

// EmptyDatabase is like Database but does not apply the schema: the database
// is as PostgreSQL creates it from template1. Tests of schema handling use it.
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	adminURL := requireEnv(t, envDatabaseURL)
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("testenv: %s must be a postgres:// URL, got %q", envDatabaseURL, adminURL)
	}
	name := randomName("t_")
	createDatabase(t, adminURL, envDatabaseURL, name)
	t.Cleanup(func() { dropDatabase(t, adminURL, name) })
	return withDatabase(u, name)
}

// createDatabase creates the database name on the server of adminURL,
// which errors call server.
func createDatabase(t testing.TB, adminURL, server, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", server, err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
}

// withDatabase returns the URL u (a server's) with its database set to name.
func withDatabase(u *url.URL, name string) string {
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// applySchema applies outboxrelay.Schema to the database at dbURL.
func applySchema(t testing.TB, dbURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("testenv: connect to test database: %v", err)
	}
	defer conn.Close(ctx)
	// Exec without arguments uses the simple protocol, which runs the
	// several statements of the schema in one round trip.
	if _, err := conn.Exec(ctx, outboxrelay.Schema); err != nil {
		t.Fatalf("testenv: apply schema: %v", err)
	}
}

// dropDatabase drops the database name, forcing its connections closed:
// a test that failed halfway may have left some open.
func dropDatabase(t testing.TB, adminURL, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Errorf("testenv: drop database %s: connect: %v", name, err)
		return
	}
	defer admin.Close(ctx)
	// A database with replication slots cannot be dropped: end their
	// sessions and drop them first (slots are the logical source's).
	for deadline := time.Now().Add(cleanupTimeout / 2); ; time.Sleep(50 * time.Millisecond) {
		var active, inactive []string
		err := admin.QueryRow(ctx, `
SELECT coalesce(array_agg(slot_name::text) FILTER (WHERE active), '{}'), coalesce(array_agg(slot_name::text) FILTER (WHERE NOT active), '{}')
  FROM pg_replication_slots WHERE database = $1`, name).Scan(&active, &inactive)
		if err == nil && len(active) > 0 {
			_, err = admin.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = ANY($1) AND active_pid IS NOT NULL`, active)
		}
		for _, slot := range inactive {
			if err == nil {
				_, err = admin.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot)
			}
		}
		if err != nil && time.Now().After(deadline) {
			t.Errorf("testenv: drop the replication slots of %s: %v", name, err)
			return
		}
		if err == nil && len(active)+len(inactive) == 0 {
			break
		}
	}
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Errorf("testenv: drop database %s: %v", name, err)
	}
}

// OpenTransactionElsewhere begins a transaction that holds a transaction
// id, in a database of its own on the same server, and returns it: while
// it runs, the server's oldest running transaction is at most its own.
// The test may end it; otherwise it is rolled back at cleanup.
func OpenTransactionElsewhere(t testing.TB) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, EmptyDatabase(t))
	if err != nil {
		t.Fatalf("testenv: connect for an open transaction: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatalf("testenv: begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatalf("testenv: take a transaction id: %v", err)
	}
	return tx
}

// WALLevel returns the wal_level of the server of dbURL.
func WALLevel(t testing.TB, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("testenv: connect: %v", err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level')`).Scan(&level); err != nil {
		t.Fatalf("testenv: read wal_level: %v", err)
	}
	return level
}

// SkipUnlessLogical skips the test unless the server of dbURL decodes
// logically (wal_level = logical), as the logical source needs; the
// throwaway servers (scripts/servers.sh, NewPostgresServer) do.
func SkipUnlessLogical(t testing.TB, dbURL string) {
	t.Helper()
	if level := WALLevel(t, dbURL); level != "logical" {
		t.Skipf("the test server has wal_level = %s; the logical source needs logical (scripts/servers.sh starts one so)", level)
	}
}
