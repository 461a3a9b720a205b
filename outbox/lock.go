package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Aggregate names one ordering key: the AggregateType and AggregateID of
// events.
type Aggregate struct{ Type, ID string }

// ErrLockAfterWrite is matched, under errors.Is, by the error of a lock
// taken after the transaction's first write, which could not order it.
var ErrLockAfterWrite = errors.New("outbox: ordering lock taken after the transaction's first write")

// ErrNotLocked is matched, under errors.Is, by the error of a write on a
// [*Tx] of an event whose aggregate the transaction did not lock.
var ErrNotLocked = errors.New("outbox: aggregate not locked by this transaction")

// Beginner begins a transaction: *pgxpool.Pool, *pgx.Conn and
// *pgxpool.Conn satisfy it. (In a pgx.Tx, take the locks with [Lock]
// before its first write instead.)
type Beginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Tx is a transaction that took the ordering locks of its aggregates
// before its first write, so that the relay publishes their events in
// commit order. It is a pgx.Tx: run the service's own statements on it
// and commit or roll it back as usual. [Write] and [Writer.Write] on a Tx
// refuse events of aggregates it did not lock, with [ErrNotLocked].
type Tx struct {
	pgx.Tx
	w      *Writer
	locked []Aggregate
}

// Begin begins a transaction on db and takes the ordering locks of
// aggregates before anything else: [Writer.BeginTx] on the zero Writer,
// with default options.
func Begin(ctx context.Context, db Beginner, aggregates ...Aggregate) (*Tx, error) {
	return BeginTx(ctx, db, pgx.TxOptions{}, aggregates...)
}

// BeginTx is [Writer.BeginTx] on the zero Writer.
func BeginTx(ctx context.Context, db Beginner, opts pgx.TxOptions, aggregates ...Aggregate) (*Tx, error) {
	var w Writer
	return w.BeginTx(ctx, db, opts, aggregates...)
}

// Begin is [Writer.BeginTx] with default options.
func (w *Writer) Begin(ctx context.Context, db Beginner, aggregates ...Aggregate) (*Tx, error) {
	return w.BeginTx(ctx, db, pgx.TxOptions{}, aggregates...)
}

// BeginTx begins a transaction on db with opts (isolation level, access
// and deferrable modes; not BeginQuery) and takes the ordering locks of
// aggregates (at least one) with the outbox_lock function of the Writer's
// schema, in the same round trip. The locks are held until the
// transaction ends: a concurrent transaction that locks one of them
// waits, then gets a larger transaction id, which is the order the relay
// publishes in. Several aggregates are locked in a fixed order, so
// transactions that lock overlapping sets do not deadlock.
//
// On error nothing is left open: a transaction that began is rolled back
// (through a pool, its connection is closed instead).
func (w *Writer) BeginTx(ctx context.Context, db Beginner, opts pgx.TxOptions, aggregates ...Aggregate) (*Tx, error) {
	if len(aggregates) == 0 {
		return nil, errors.New("outbox: Begin needs at least one aggregate to lock")
	}
	if err := checkAggregates(aggregates); err != nil {
		return nil, err
	}
	if opts.BeginQuery != "" {
		return nil, errors.New("outbox: BeginTx writes its own BEGIN; leave TxOptions.BeginQuery empty")
	}
	// BEGIN and the lock as one simple-protocol query: one round trip.
	opts.BeginQuery = beginSQL(opts) + "; " + w.lockLiteralSQL(aggregates)
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		if _, pool := db.(*pgxpool.Pool); !pool {
			if e, ok := db.(Execer); ok {
				_, _ = e.Exec(context.WithoutCancel(ctx), "ROLLBACK")
			}
		}
		return nil, lockError(err)
	}
	return &Tx{Tx: tx, w: w, locked: slices.Clone(aggregates)}, nil
}

// beginSQL is the BEGIN statement of opts, as pgx writes it.
func beginSQL(opts pgx.TxOptions) string {
	var b strings.Builder
	b.WriteString("BEGIN")
	if opts.IsoLevel != "" {
		b.WriteString(" ISOLATION LEVEL " + string(opts.IsoLevel))
	}
	if opts.AccessMode != "" {
		b.WriteString(" " + string(opts.AccessMode))
	}
	if opts.DeferrableMode != "" {
		b.WriteString(" " + string(opts.DeferrableMode))
	}
	return b.String()
}

// lockLiteralSQL is the outbox_lock call for aggregates with the values
// written in as escape-string literals, which mean the same whatever
// standard_conforming_strings says (the values hold no NUL: checked).
func (w *Writer) lockLiteralSQL(aggregates []Aggregate) string {
	var b strings.Builder
	b.WriteString("SELECT " + w.lockFunc() + "(")
	for i, a := range aggregates {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(literal(a.Type) + ", " + literal(a.ID))
	}
	b.WriteByte(')')
	return b.String()
}

// escaper doubles the backslashes and quotes of an E'...' literal.
var escaper = strings.NewReplacer(`\`, `\\`, `'`, `''`)

func literal(s string) string { return "E'" + escaper.Replace(s) + "'" }

// Lock takes the ordering locks of more aggregates. It works only while
// the transaction has written nothing; after a write it fails with
// [ErrLockAfterWrite] and the transaction must be rolled back. Lock every
// aggregate in one call where you can: locks taken in separate calls are
// not ordered against other transactions' and can deadlock (PostgreSQL
// then aborts one of them).
func (t *Tx) Lock(ctx context.Context, aggregates ...Aggregate) error {
	if err := t.w.lock(ctx, t.Tx, aggregates); err != nil {
		return err
	}
	t.locked = append(t.locked, aggregates...)
	return nil
}

// covers reports the first event whose aggregate t did not lock.
func (t *Tx) covers(events []Event) error {
	for i := range events {
		a := Aggregate{events[i].AggregateType, events[i].AggregateID}
		if !slices.Contains(t.locked, a) {
			return fmt.Errorf("event %d: aggregate %s/%s (lock it in outbox.Begin or Tx.Lock): %w", i, a.Type, a.ID, ErrNotLocked)
		}
	}
	return nil
}

// Lock takes the ordering locks of aggregates on tx, the caller's
// transaction: [Writer.Lock] on the zero Writer.
func Lock(ctx context.Context, tx pgx.Tx, aggregates ...Aggregate) (*Tx, error) {
	var w Writer
	return w.Lock(ctx, tx, aggregates...)
}

// Lock takes the ordering locks of aggregates on tx, which must not have
// written anything yet (no INSERT, UPDATE, DELETE or SELECT ... FOR UPDATE):
// otherwise it fails with [ErrLockAfterWrite], since the transaction
// already has its id and the lock could not order it; tx must then be
// rolled back. It returns tx as a [*Tx], on which Write checks events
// against the locks. It costs one statement, SELECT outbox_lock(...);
// [Writer.Begin] takes the locks in the BEGIN's own round trip.
func (w *Writer) Lock(ctx context.Context, tx pgx.Tx, aggregates ...Aggregate) (*Tx, error) {
	if err := w.lock(ctx, tx, aggregates); err != nil {
		return nil, err
	}
	return &Tx{Tx: tx, w: w, locked: slices.Clone(aggregates)}, nil
}

func (w *Writer) lock(ctx context.Context, tx Execer, aggregates []Aggregate) error {
	args, err := lockArgs(aggregates)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, w.lockSQL(), args)
	return lockError(err)
}

// LockSQL is [Writer.Lock] for database/sql: tx is a *sql.Tx or *sql.Conn
// on the pgx driver.
func (w *Writer) LockSQL(ctx context.Context, tx SQLExecer, aggregates ...Aggregate) error {
	args, err := lockArgs(aggregates)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, w.lockSQL(), args)
	return lockError(err)
}

func (w *Writer) lockSQL() string {
	return "SELECT " + w.lockFunc() + "(VARIADIC $1::text[])"
}

// lockFunc names the outbox_lock function of the Writer's schema.
func (w *Writer) lockFunc() string {
	if w.lockFn == "" {
		return "outbox_lock" // the zero Writer: search_path, like DefaultTable
	}
	return w.lockFn
}

func lockArgs(aggregates []Aggregate) ([]string, error) {
	if len(aggregates) == 0 {
		return nil, errors.New("outbox: Lock needs at least one aggregate")
	}
	if err := checkAggregates(aggregates); err != nil {
		return nil, err
	}
	pairs := make([]string, 0, 2*len(aggregates))
	for _, a := range aggregates {
		pairs = append(pairs, a.Type, a.ID)
	}
	return pairs, nil
}

// checkAggregates refuses what an event could not carry: an empty type or
// id, text PostgreSQL cannot store.
func checkAggregates(aggregates []Aggregate) error {
	for i, a := range aggregates {
		for _, f := range [2]struct{ name, v string }{{"Type", a.Type}, {"ID", a.ID}} {
			switch {
			case f.v == "":
				return fmt.Errorf("outbox: aggregate %d: %s is empty", i, f.name)
			case !utf8.ValidString(f.v) || strings.ContainsRune(f.v, 0):
				return fmt.Errorf("outbox: aggregate %d: %s is not valid UTF-8 text without NUL bytes", i, f.name)
			}
		}
	}
	return nil
}

// lockError translates outbox_lock's refusal and a schema without the
// function.
func lockError(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "55000" && strings.HasPrefix(pe.Message, "outbox_lock:"):
			return fmt.Errorf("%w: %s", ErrLockAfterWrite, strings.TrimPrefix(pe.Message, "outbox_lock: "))
		case pe.Code == "42883": // undefined_function
			return fmt.Errorf("outbox: lock: %w (apply the current schema.sql, or run outbox-relay migrate)", err)
		}
	}
	return fmt.Errorf("outbox: lock: %w", err)
}
