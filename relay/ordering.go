package relay

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// The relay publishes in (transaction id, row id) order. That is commit
// order for one aggregate only when its writers take the aggregate's
// ordering lock (outbox_lock, or outbox.Begin in Go) before their first
// write: PostgreSQL assigns a transaction its id at its first write, and
// UPDATE or SELECT ... FOR UPDATE take the id before they wait for a row
// lock, so the row lock alone lets a later committer hold the smaller id.
// Each row records the locks its transaction took; the relay counts and
// reports the rows whose aggregate was not among them, whose order among
// concurrent writers of the aggregate it cannot vouch for.

// Lock is what a row says of its transaction's ordering lock.
type Lock uint8

const (
	// LockUnknown: the outbox does not record ordering locks (a table
	// made before them), so nothing is known.
	LockUnknown Lock = iota
	// LockHeld: the transaction locked the row's aggregate before its
	// first write, so the row is published in commit order.
	LockHeld
	// LockMissing: it did not; the row's order relative to concurrent
	// writers of its aggregate is not guaranteed.
	LockMissing
)

// LockCheck is what the relay does about rows written without their
// aggregate's ordering lock.
type LockCheck string

const (
	// LockCheckWarn counts them and logs a summary naming their
	// aggregates, at most every lockReportEvery.
	LockCheckWarn LockCheck = "warn"
	// LockCheckCount only counts them (Observer.Unlocked), for teams that
	// do not need commit order.
	LockCheckCount LockCheck = "count"
)

// lockReportEvery bounds how often unlocked rows are logged.
const lockReportEvery = 30 * time.Second

// lockReport gathers the unlocked rows recorded as published and logs
// them: the first at once, the rest in a summary at most every
// lockReportEvery.
type lockReport struct {
	log      *slog.Logger
	quiet    bool
	rows     int
	examples []string // aggregates, the first maxExamples
	first    int64    // id of the first row gathered
	last     time.Time
}

const maxExamples = 5

// add gathers the unlocked rows among rows and logs when due. It returns
// how many it gathered.
func (l *lockReport) add(rows []Row, now time.Time) int {
	n := 0
	for i := range rows {
		if rows[i].Lock != LockMissing {
			continue
		}
		n++
		if l.rows == 0 {
			l.first = rows[i].ID
		}
		l.rows++
		a := rows[i].AggregateType + "/" + rows[i].AggregateID
		if len(l.examples) < maxExamples && !slices.Contains(l.examples, a) {
			l.examples = append(l.examples, a)
		}
	}
	if l.rows > 0 && now.Sub(l.last) >= lockReportEvery {
		l.flush(now)
	}
	return n
}

// flush logs what was gathered, if anything.
func (l *lockReport) flush(now time.Time) {
	if l.rows == 0 {
		return
	}
	if !l.quiet {
		l.log.Warn("published rows whose transaction did not take their aggregate's ordering lock (outbox_lock) before its first write: their order among concurrent writers of the aggregate is not guaranteed",
			"rows", l.rows, "first_id", l.first, "aggregates", strings.Join(l.examples, " "))
	}
	l.rows, l.examples, l.last = 0, l.examples[:0], now
}

// validLockCheck reports whether c is a known LockCheck.
func validLockCheck(c LockCheck) error {
	switch c {
	case LockCheckWarn, LockCheckCount:
		return nil
	}
	return fmt.Errorf("must be %s or %s, got %q", LockCheckWarn, LockCheckCount, c)
}
