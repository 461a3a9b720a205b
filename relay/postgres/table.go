package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/sqlname"
)

// Table is a validated outbox table name. Only plain identifiers are
// accepted, and they are always quoted, so RELAY_TABLE cannot carry SQL.
type Table struct {
	Schema string // empty: resolved through search_path
	Name   string
}

// ParseTable parses "name" or "schema.name". Each part must be a plain
// identifier: a letter or underscore, then letters, digits or underscores, at
// most 63 bytes.
func ParseTable(s string) (Table, error) {
	n, err := sqlname.Parse(s, sqlname.MaxIdentifier)
	return Table(n), err
}

// String returns the name as given, unquoted.
func (t Table) String() string { return sqlname.Name(t).String() }

// sql returns the quoted name for use in SQL text.
func (t Table) sql() string { return sqlname.Name(t).Quoted() }

// sibling returns a quoted name for another table in the same schema.
func (t Table) sibling(name string) string { return sqlname.Name(t).Sibling(name) }

// resolveTable names table t as schema.name and tells whether it has the
// lock_keys column of ordering locks. It fails, saying how to create it,
// if the table does not exist or lacks the relay's txid column.
func resolveTable(ctx context.Context, pool *pgxpool.Pool, t Table) (key string, lockKeys bool, err error) {
	var name *string
	if err := pool.QueryRow(ctx, resolveQuery, t.sql()).Scan(&name); err != nil {
		return "", false, fmt.Errorf("look up table %s: %w", t, err)
	}
	if name == nil {
		return "", false, fmt.Errorf("table %s does not exist (run outbox-relay migrate, or apply schema.sql)", t)
	}
	var txid bool
	if err := pool.QueryRow(ctx, columnsQuery, t.sql()).Scan(&txid, &lockKeys); err != nil {
		return "", false, fmt.Errorf("check table %s: %w", t, err)
	}
	if !txid {
		return "", false, fmt.Errorf("table %s has no txid xid8 column (apply schema.sql)", t)
	}
	return *name, lockKeys, nil
}
