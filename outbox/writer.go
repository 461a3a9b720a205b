package outbox

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs a statement on a pgx connection or transaction. pgx.Tx,
// *pgx.Conn, *pgxpool.Pool and *pgxpool.Conn satisfy it. Pass the
// transaction that changes the service's state, so that the events commit or
// roll back with it.
type Execer interface {
	Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error)
}

// SQLExecer runs a statement through database/sql. *sql.Tx, *sql.Conn and
// *sql.DB satisfy it; the database must be opened with the pgx driver,
// github.com/jackc/pgx/v5/stdlib.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Writer inserts events into one outbox table. It holds no connection and no
// mutable state, so one Writer serves any number of goroutines. The zero
// Writer writes to [DefaultTable].
type Writer struct {
	// TraceContext, if set, returns the W3C trace context (traceparent and
	// tracestate, as in HTTP headers) of a Write's ctx, so that tracing
	// libraries such as OpenTelemetry plug in without the package depending
	// on them. It is called once per Write that has events, and only when
	// ctx carries no [ContextWithTraceParent] value, which wins (an empty
	// one turns the hook off). The result is added as the headers
	// traceparent and tracestate to every event of the call whose own
	// Headers name neither; a traceparent that is not well-formed (empty
	// included) adds nothing and fails nothing. Set it before the Writer's
	// first use; a shared Writer calls it from many goroutines.
	TraceContext func(ctx context.Context) (traceparent, tracestate string)

	query string
	// lockFn is the outbox_lock function of the table's schema.
	lockFn string
}

// NewWriter returns a Writer for table, "name" or "schema.name"; empty means
// [DefaultTable]. An unqualified name is looked up on search_path. Each part
// must be a plain identifier of at most 63 bytes (letters, digits and
// underscores, not starting with a digit); it is used exactly as given,
// quoted, so it is case-sensitive: "Outbox" is not the table outbox. Any
// other name fails with an error matching [ErrInvalidTable].
func NewWriter(table string) (*Writer, error) {
	quoted, schema, err := parseTable(table)
	if err != nil {
		return nil, err
	}
	lockFn := "outbox_lock"
	if schema != "" {
		lockFn = schema + ".outbox_lock"
	}
	return &Writer{query: insertSQL(quoted), lockFn: lockFn}, nil
}

// defaultQuery is the statement of the zero Writer and of Write.
var defaultQuery = insertSQL(`"` + DefaultTable + `"`)

// Write inserts events into [DefaultTable] on db, usually the caller's
// transaction. It is [Writer.Write] on the zero Writer.
func Write(ctx context.Context, db Execer, events ...Event) error {
	var w Writer
	return w.Write(ctx, db, events...)
}

// Write inserts events on db, usually the caller's transaction, with one
// statement in one round trip. Events of one transaction get ascending row
// ids in the order given. With no events it does nothing and returns nil.
//
// A refused event fails the whole call with a [*ValidationError] before
// anything is sent. On a [*Tx] from [Begin], an event of an aggregate the
// transaction did not lock fails it with [ErrNotLocked]. A database error
// is returned wrapped; inside a transaction it aborts the transaction,
// which the caller must roll back.
func (w *Writer) Write(ctx context.Context, db Execer, events ...Event) error {
	args, err := w.prepare(ctx, events)
	if err != nil || args == nil {
		return err
	}
	if tx, ok := db.(*Tx); ok {
		if err := tx.covers(events); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	tag, err := db.Exec(ctx, w.sql(), args...)
	if err != nil {
		return fmt.Errorf("outbox: insert %d events: %w", len(events), err)
	}
	return checkCount(tag.RowsAffected(), len(events))
}

// WriteSQL is [Writer.Write] for database/sql: db is a *sql.Tx, *sql.Conn or
// *sql.DB opened with the pgx driver (github.com/jackc/pgx/v5/stdlib).
func (w *Writer) WriteSQL(ctx context.Context, db SQLExecer, events ...Event) error {
	args, err := w.prepare(ctx, events)
	if err != nil || args == nil {
		return err
	}
	res, err := db.ExecContext(ctx, w.sql(), args...)
	if err != nil {
		return fmt.Errorf("outbox: insert %d events: %w", len(events), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("outbox: insert %d events: rows affected: %w", len(events), err)
	}
	return checkCount(n, len(events))
}

// prepare validates events and returns the insert's arguments: nil, and no
// error, when there are no events (nothing to insert).
func (w *Writer) prepare(ctx context.Context, events []Event) ([]any, error) {
	if len(events) == 0 {
		return nil, nil
	}
	return w.columns(ctx, events)
}

func (w *Writer) sql() string {
	if w.query == "" {
		return defaultQuery
	}
	return w.query
}

// checkCount guards against a statement that ran but did not insert every
// event, which a rule or trigger on the table could cause.
func checkCount(got int64, want int) error {
	if got != int64(want) {
		return fmt.Errorf("outbox: inserted %d rows for %d events", got, want)
	}
	return nil
}
