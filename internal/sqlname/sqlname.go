// Package sqlname parses the table names users configure ("name" or
// "schema.name") and quotes them for SQL text. Only plain identifiers are
// accepted, and they are always quoted, so a configured name can never
// change a statement, and a reserved word such as "order" still works.
package sqlname

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// MaxIdentifier is PostgreSQL's NAMEDATALEN-1: the server silently
// truncates longer names, so they would name a different table.
const MaxIdentifier = 63

// identifier is a plain SQL identifier: no quoting, no dots, no spaces.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Name is a parsed table name.
type Name struct {
	Schema string // empty: resolved through search_path
	Name   string
}

// Parse parses "name" or "schema.name". Each part must be a plain
// identifier of at most MaxIdentifier bytes; the table part at most
// maxTable, for callers that name sibling tables by adding a suffix. The
// error says what is wrong, for the caller to wrap.
func Parse(s string, maxTable int) (Name, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return Name{}, fmt.Errorf("%q: want name or schema.name", s)
	}
	for i, p := range parts {
		limit := MaxIdentifier
		if i == len(parts)-1 {
			limit = min(limit, maxTable)
		}
		if !identifier.MatchString(p) {
			return Name{}, fmt.Errorf("%q is not a plain identifier (a letter or underscore, then letters, digits and underscores)", p)
		}
		if len(p) > limit {
			return Name{}, fmt.Errorf("%q is longer than %d bytes", p, limit)
		}
	}
	if len(parts) == 2 {
		return Name{Schema: parts[0], Name: parts[1]}, nil
	}
	return Name{Name: parts[0]}, nil
}

// String returns the name as given, unquoted.
func (n Name) String() string {
	if n.Schema == "" {
		return n.Name
	}
	return n.Schema + "." + n.Name
}

// Quoted returns the name for SQL text.
func (n Name) Quoted() string { return n.Sibling(n.Name) }

// Sibling returns the quoted name of another table in the same schema.
func (n Name) Sibling(table string) string {
	if n.Schema == "" {
		return pgx.Identifier{table}.Sanitize()
	}
	return pgx.Identifier{n.Schema, table}.Sanitize()
}

// QuotedSchema returns the quoted schema, or "" for a name without one.
func (n Name) QuotedSchema() string {
	if n.Schema == "" {
		return ""
	}
	return pgx.Identifier{n.Schema}.Sanitize()
}
