package postgres

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Table is a validated outbox table name. Only plain identifiers are
// accepted, and they are always quoted, so RELAY_TABLE cannot carry SQL.
type Table struct {
	Schema string // empty: resolved through search_path
	Name   string
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// ParseTable parses "name" or "schema.name". Each part must be a plain
// identifier: a letter or underscore, then letters, digits or underscores, at
// most 63 bytes.
func ParseTable(s string) (Table, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return Table{}, fmt.Errorf("%q: want name or schema.name", s)
	}
	for _, p := range parts {
		if !identifier.MatchString(p) {
			return Table{}, fmt.Errorf("%q is not a plain identifier (letters, digits and _, not starting with a digit, at most 63 bytes)", p)
		}
	}
	if len(parts) == 2 {
		return Table{Schema: parts[0], Name: parts[1]}, nil
	}
	return Table{Name: parts[0]}, nil
}

// String returns the name as given, unquoted.
func (t Table) String() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

// sql returns the quoted name for use in SQL text.
func (t Table) sql() string {
	if t.Schema == "" {
		return pgx.Identifier{t.Name}.Sanitize()
	}
	return pgx.Identifier{t.Schema, t.Name}.Sanitize()
}

// sibling returns a quoted name for another table in the same schema.
func (t Table) sibling(name string) string {
	if t.Schema == "" {
		return pgx.Identifier{name}.Sanitize()
	}
	return pgx.Identifier{t.Schema, name}.Sanitize()
}

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
