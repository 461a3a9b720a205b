package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay"
)

// exampleDatabaseURL names the database the examples run against. Examples
// get no *testing.T, so testenv cannot make one for them: TestMain does it.
var exampleDatabaseURL string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	adminURL := os.Getenv("RELAY_TEST_DATABASE_URL")
	if adminURL == "" {
		// As testenv does: a run without a server fails, it does not pass
		// by testing nothing.
		fmt.Fprintln(os.Stderr, "outbox tests: RELAY_TEST_DATABASE_URL is not set; run them with \"make test\" or set it to a PostgreSQL admin URL")
		return 1
	}
	dbURL, drop, err := createExampleDatabase(adminURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outbox tests:", err)
		return 1
	}
	exampleDatabaseURL = dbURL
	code := m.Run()
	if err := drop(); err != nil {
		fmt.Fprintln(os.Stderr, "outbox tests:", err)
		return 1
	}
	return code
}

// createExampleDatabase creates a database with the outbox schema and the
// examples' business table, and returns its URL and a function that drops it.
func createExampleDatabase(adminURL string) (string, func() error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "t_example_" + hex.EncodeToString(b[:])

	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to RELAY_TEST_DATABASE_URL: %w", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return fmt.Errorf("drop database %s: connect: %w", name, err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}

	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("parse RELAY_TEST_DATABASE_URL: %w", err)
	}
	u.Path, u.RawPath = "/"+name, ""
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return "", nil, errors.Join(fmt.Errorf("connect to %s: %w", name, err), drop())
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, outboxrelay.Schema); err != nil {
		return "", nil, errors.Join(fmt.Errorf("apply schema: %w", err), drop())
	}
	const orders = `
		CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total_cents bigint NOT NULL);
		INSERT INTO orders VALUES (42, 'placed', 1999), (43, 'placed', 500);`
	if _, err := conn.Exec(ctx, orders); err != nil {
		return "", nil, errors.Join(fmt.Errorf("create orders: %w", err), drop())
	}
	return u.String(), drop, nil
}
