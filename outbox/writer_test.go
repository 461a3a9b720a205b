package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("stores every column of one event", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		e := outbox.Event{
			AggregateType: "order", AggregateID: "42", EventType: "OrderPaid",
			Exchange: "orders", RoutingKey: "orders.paid", Payload: []byte(`{"id":42}`),
			ContentType: "application/vnd.acme+json", Headers: map[string]any{"tenant": "acme"},
			EventID: "0b9c8f8e-4a5e-4c59-9a0e-3f6f5d0c1a2b",
		}
		tx, err := b.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Write(ctx, tx, e); err != nil {
			t.Fatal(err)
		}
		var txid string
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&txid); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		rows := readRows(t, b.conn, "outbox")
		checkStored(t, rows, []outbox.Event{e})
		if rows[0].TxID != txid {
			t.Errorf("txid = %s, want the writing transaction's %s", rows[0].TxID, txid)
		}
	})

	t.Run("applies the rules for empty fields", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		events := sampleEvents()
		if err := outbox.Write(ctx, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		rows := readRows(t, b.conn, "outbox")
		checkStored(t, rows, events)
		if rows[0].Exchange != nil {
			t.Errorf("exchange = %q, want NULL for an empty Exchange", *rows[0].Exchange)
		}
	})

	t.Run("writes many events with one statement in one round trip", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tx, err := b.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		// The first write prepares the statement; the SQL text is the same
		// for every batch size, so later writes of any size reuse it.
		b.tracer.take() // begin
		if err := outbox.Write(ctx, tx, numbered("warm-up", 1)...); err != nil {
			t.Fatal(err)
		}
		first := b.tracer.take()
		for _, n := range []int{1, 2, 1000} {
			events := numbered(fmt.Sprint("agg-", n), n)
			trips := b.wire.roundTrips()
			if err := outbox.Write(ctx, tx, events...); err != nil {
				t.Fatal(err)
			}
			if got := b.wire.roundTrips() - trips; got != 1 {
				t.Errorf("%d events: %d round trips, want 1", n, got)
			}
			queries := b.tracer.take()
			if len(queries) != 1 || queries[0] != first[0] {
				t.Errorf("%d events: queries %q, want the one statement %q", n, queries, first[0])
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var count int
		if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if count != 1+1+2+1000 {
			t.Errorf("%d rows, want 1004", count)
		}
	})

	t.Run("keeps the order of the events in ids and gives them one txid", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		events := numbered("order-1", 500)
		if err := outbox.Write(ctx, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		rows := readRows(t, b.conn, "outbox")
		checkStored(t, rows, events) // compares row i (by id) with event i
		for _, r := range rows {
			if r.TxID != rows[0].TxID {
				t.Fatalf("txids %s and %s in one statement", rows[0].TxID, r.TxID)
			}
		}
	})

	t.Run("rollback leaves no rows", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tx, err := b.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Write(ctx, tx, sampleEvents()...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if rows := readRows(t, b.conn, "outbox"); len(rows) != 0 {
			t.Errorf("%d rows after rollback, want none", len(rows))
		}
	})

	t.Run("zero events do not touch the database", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		trips := b.wire.roundTrips()
		if err := outbox.Write(ctx, b.conn); err != nil {
			t.Fatal(err)
		}
		w, err := outbox.NewWriter("")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteSQL(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if q := b.tracer.take(); len(q) != 0 || b.wire.roundTrips() != trips {
			t.Errorf("queries %q, %d round trips, want none", q, b.wire.roundTrips()-trips)
		}
	})

	t.Run("explicit event id is stored, a repeated one fails with the driver error", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		e := numbered("dup", 1)[0]
		e.EventID = "11111111-2222-4333-8444-555555555555"
		if err := outbox.Write(ctx, b.conn, e); err != nil {
			t.Fatal(err)
		}
		err := outbox.Write(ctx, b.conn, e)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("second write: %v, want a unique violation (23505)", err)
		}
		if errors.Is(err, outbox.ErrInvalidEvent) {
			t.Errorf("database error %v matches ErrInvalidEvent", err)
		}
		checkStored(t, readRows(t, b.conn, "outbox"), []outbox.Event{e})
	})

	t.Run("headers keep their types", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		type priority int
		e := numbered("headers", 1)[0]
		e.Headers = map[string]any{
			"s": "text <&>", "empty": "", "t": true, "f": false,
			"int": -7, "int8": int8(-8), "int64": int64(-1 << 62), "uint64": uint64(1<<64 - 1), "uint8": uint8(255),
			"float64": 1.5, "float32": float32(0.1), "big": 1e300, "named": priority(3),
		}
		if err := outbox.Write(ctx, b.conn, e); err != nil {
			t.Fatal(err)
		}
		var types map[string]string
		err := b.conn.QueryRow(ctx, `SELECT jsonb_object_agg(key, jsonb_typeof(value)) FROM outbox, jsonb_each(headers)`).Scan(&types)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"s": "string", "empty": "string", "t": "boolean", "f": "boolean",
			"int": "number", "int8": "number", "int64": "number", "uint64": "number", "uint8": "number",
			"float64": "number", "float32": "number", "big": "number", "named": "number",
		}
		if fmt.Sprint(types) != fmt.Sprint(want) {
			t.Errorf("header types %v, want %v", types, want)
		}
		got := decodeJSON(t, readRows(t, b.conn, "outbox")[0].Headers)
		for k, v := range map[string]string{
			"s": "text <&>", "int": "-7", "int64": "-4611686018427387904", "uint64": "18446744073709551615",
			"float64": "1.5", "float32": "0.1", "named": "3", "t": "true",
		} {
			if fmt.Sprint(got[k]) != v {
				t.Errorf("header %s = %v, want %s", k, got[k], v)
			}
		}
	})
}

// numbered returns n valid events of one aggregate, with payloads 0..n-1.
func numbered(aggregateID string, n int) []outbox.Event {
	events := make([]outbox.Event, n)
	for i := range events {
		events[i] = outbox.Event{
			AggregateType: "test", AggregateID: aggregateID, EventType: "Numbered",
			RoutingKey: "test.numbered", Payload: fmt.Appendf(nil, `{"n":%d}`, i),
		}
	}
	return events
}

// TestDrivers writes through every kind of handle the package supports.
func TestDrivers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, err := outbox.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	pgxCases := map[string]func(t *testing.T, url string) (outbox.Execer, func() error){
		"pgx.Tx from *pgx.Conn": func(t *testing.T, url string) (outbox.Execer, func() error) {
			tx, err := connect(t, url, nil).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return tx, func() error { return tx.Commit(ctx) }
		},
		"*pgx.Conn": func(t *testing.T, url string) (outbox.Execer, func() error) {
			return connect(t, url, nil), nil
		},
		"pgx.Tx from *pgxpool.Pool": func(t *testing.T, url string) (outbox.Execer, func() error) {
			tx, err := pool(t, url).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return tx, func() error { return tx.Commit(ctx) }
		},
		"*pgxpool.Pool": func(t *testing.T, url string) (outbox.Execer, func() error) {
			return pool(t, url), nil
		},
		"*pgxpool.Conn": func(t *testing.T, url string) (outbox.Execer, func() error) {
			c, err := pool(t, url).Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return c, func() error { c.Release(); return nil }
		},
	}
	for name, open := range pgxCases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := testenv.Database(t)
			db, done := open(t, url)
			if err := w.Write(ctx, db, sampleEvents()...); err != nil {
				t.Fatal(err)
			}
			if done != nil {
				if err := done(); err != nil {
					t.Fatal(err)
				}
			}
			checkStored(t, readRows(t, connect(t, url, nil), "outbox"), sampleEvents())
		})
	}

	sqlCases := map[string]func(t *testing.T, db *sql.DB) (outbox.SQLExecer, func() error){
		"*sql.Tx": func(t *testing.T, db *sql.DB) (outbox.SQLExecer, func() error) {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			return tx, tx.Commit
		},
		"*sql.Conn": func(t *testing.T, db *sql.DB) (outbox.SQLExecer, func() error) {
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return c, c.Close
		},
		"*sql.DB": func(t *testing.T, db *sql.DB) (outbox.SQLExecer, func() error) {
			return db, nil
		},
	}
	for name, open := range sqlCases {
		t.Run(name+" with pgx stdlib", func(t *testing.T) {
			t.Parallel()
			url := testenv.Database(t)
			db := sqlDB(t, url, pgx.QueryExecModeCacheStatement)
			execer, done := open(t, db)
			if err := w.WriteSQL(ctx, execer, sampleEvents()...); err != nil {
				t.Fatal(err)
			}
			if done != nil {
				if err := done(); err != nil {
					t.Fatal(err)
				}
			}
			checkStored(t, readRows(t, connect(t, url, nil), "outbox"), sampleEvents())
		})
	}

	t.Run("*sql.Tx rollback leaves no rows", func(t *testing.T) {
		t.Parallel()
		url := testenv.Database(t)
		tx, err := sqlDB(t, url, pgx.QueryExecModeCacheStatement).BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteSQL(ctx, tx, sampleEvents()...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if rows := readRows(t, connect(t, url, nil), "outbox"); len(rows) != 0 {
			t.Errorf("%d rows after rollback, want none", len(rows))
		}
	})
}

// TestExecModes writes through pgx and database/sql in every query
// execution mode: the simple protocol (PgBouncer) encodes arguments as
// text on the client, the others in binary with types from the server.
func TestExecModes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	modes := []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	}
	var w outbox.Writer // the zero Writer writes to the default table
	for _, mode := range modes {
		t.Run(mode.String()+" pgx", func(t *testing.T) {
			t.Parallel()
			url := testenv.Database(t)
			conn := connect(t, url, func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = mode })
			// The second write uses whatever the first one cached.
			again := numbered("again", 3)
			if err := w.Write(ctx, conn, sampleEvents()...); err != nil {
				t.Fatal(err)
			}
			if err := w.Write(ctx, conn, again...); err != nil {
				t.Fatal(err)
			}
			checkStored(t, readRows(t, conn, "outbox"), append(sampleEvents(), again...))
		})
		t.Run(mode.String()+" database/sql", func(t *testing.T) {
			t.Parallel()
			url := testenv.Database(t)
			db := sqlDB(t, url, mode)
			if err := w.WriteSQL(ctx, db, sampleEvents()...); err != nil {
				t.Fatal(err)
			}
			checkStored(t, readRows(t, connect(t, url, nil), "outbox"), sampleEvents())
		})
	}
}

func pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// sqlDB opens url through database/sql with the pgx driver.
func sqlDB(t testing.TB, url string, mode pgx.QueryExecMode) *sql.DB {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { db.Close() })
	return db
}
