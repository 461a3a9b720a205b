package outbox

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DefaultTable is the outbox table used by [Write] and by a Writer created
// with an empty table name: outbox, in the first schema of search_path, as
// schema.sql creates it.
const DefaultTable = "outbox"

// ErrInvalidTable is matched, under errors.Is, by the error [NewWriter]
// returns for a table name it refuses.
var ErrInvalidTable = errors.New("outbox: invalid table name")

// identifier is what NewWriter accepts as a schema or table name: a plain
// SQL identifier, no quoting, no dots, no spaces. Anything else is refused
// rather than escaped, so a name can never change the statement.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// maxIdentifier is PostgreSQL's NAMEDATALEN-1: longer names are silently
// truncated by the server, so they would name a different table.
const maxIdentifier = 63

// parseTable splits "name" or "schema.name" into a quoted SQL identifier,
// and returns the quoted schema too ("" for a name without one).
func parseTable(table string) (quoted, schema string, err error) {
	if table == "" {
		table = DefaultTable
	}
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return "", "", fmt.Errorf("%w %q: want name or schema.name", ErrInvalidTable, table)
	}
	for _, p := range parts {
		if len(p) > maxIdentifier {
			return "", "", fmt.Errorf("%w %q: %q is longer than %d bytes", ErrInvalidTable, table, p, maxIdentifier)
		}
		if !identifier.MatchString(p) {
			return "", "", fmt.Errorf("%w %q: %q is not a letter or underscore followed by letters, digits and underscores", ErrInvalidTable, table, p)
		}
	}
	// Quoted, so the name is exact and case-sensitive, and a reserved word
	// such as "order" still works.
	if len(parts) == 2 {
		schema = pgx.Identifier(parts[:1]).Sanitize()
	}
	return pgx.Identifier(parts).Sanitize(), schema, nil
}
