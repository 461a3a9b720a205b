package testenv

import (
	"context"
	"net/url"
	"testing"

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

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", envDatabaseURL, err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() { dropDatabase(t, adminURL, name) })

	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
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
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Errorf("testenv: drop database %s: %v", name, err)
	}
}
