package outbox

import (
	"errors"
	"fmt"

	"github.com/outboxrelay/outboxrelay/internal/sqlname"
)

// DefaultTable is the outbox table used by [Write] and by a Writer created
// with an empty table name: outbox, in the first schema of search_path, as
// schema.sql creates it.
const DefaultTable = "outbox"

// ErrInvalidTable is matched, under errors.Is, by the error [NewWriter]
// returns for a table name it refuses.
var ErrInvalidTable = errors.New("outbox: invalid table name")

// parseTable splits "name" or "schema.name" into a quoted SQL identifier,
// and returns the quoted schema too ("" for a name without one).
func parseTable(table string) (quoted, schema string, err error) {
	if table == "" {
		table = DefaultTable
	}
	n, err := sqlname.Parse(table, sqlname.MaxIdentifier)
	if err != nil {
		return "", "", fmt.Errorf("%w %q: %w", ErrInvalidTable, table, err)
	}
	return n.Quoted(), n.QuotedSchema(), nil
}
