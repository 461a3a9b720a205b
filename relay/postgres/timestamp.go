package postgres

import (
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// timestamp scans a row's created_at into a time.Time. 'infinity' and
// '-infinity', which no time.Time holds, become the zero time: the
// message goes out without a timestamp instead of the read failing on
// that row for ever.
type timestamp struct{ t *time.Time }

// ScanTimestamptz implements pgtype.TimestamptzScanner.
func (ts timestamp) ScanTimestamptz(v pgtype.Timestamptz) error {
	*ts.t = time.Time{}
	if v.Valid && v.InfinityModifier == pgtype.Finite {
		*ts.t = v.Time
	}
	return nil
}
