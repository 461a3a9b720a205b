package main

import (
	"fmt"
	"io"

	"github.com/outboxrelay/outboxrelay/examples/internal/report"
)

// tally counts what the consumer received and checks it as it arrives:
// duplicates by message_id, order by the per-order sequence number. A
// duplicate is not checked for order; the guarantee is about first
// deliveries.
type tally struct {
	deliveries map[string]int // message_id -> times delivered
	lastSeq    map[string]int // aggregate id -> highest seq delivered first
	violations []string       // one line per out-of-order first delivery
	duplicates int            // deliveries beyond the first of a message_id
	malformed  int            // bodies that are not an orderEvent
}

func newTally() *tally {
	return &tally{deliveries: map[string]int{}, lastSeq: map[string]int{}}
}

// record counts one delivery. It returns how many times the message has now
// been delivered and, for an out-of-order first delivery, the seq expected.
func (t *tally) record(messageID, aggregateID string, seq int) (times, expected int) {
	t.deliveries[messageID]++
	times = t.deliveries[messageID]
	if times > 1 {
		t.duplicates++
		return times, 0
	}
	last := t.lastSeq[aggregateID]
	if seq != last+1 {
		expected = last + 1
		t.violations = append(t.violations,
			fmt.Sprintf("order %s: seq %d arrived when seq %d was expected", aggregateID, seq, expected))
	}
	t.lastSeq[aggregateID] = max(last, seq)
	return times, expected
}

// unique is the number of distinct message_ids delivered.
func (t *tally) unique() int { return len(t.deliveries) }

// verdict compares the deliveries with the database's view: the event_ids
// of the committed outbox rows, and those the service rolled back.
type verdict struct {
	committed, rolledBack        int
	delivered, duplicates        int
	lost, unexpected, violations []string
	rolledBackDelivered          int
	malformed                    int
}

func (t *tally) verdict(committed, rolledBack []string) verdict {
	v := verdict{
		committed: len(committed), rolledBack: len(rolledBack),
		delivered: t.unique(), duplicates: t.duplicates,
		violations: t.violations, malformed: t.malformed,
	}
	isCommitted := make(map[string]bool, len(committed))
	for _, id := range committed {
		isCommitted[id] = true
		if t.deliveries[id] == 0 {
			v.lost = append(v.lost, id)
		}
	}
	for _, id := range rolledBack {
		if t.deliveries[id] > 0 {
			v.rolledBackDelivered++
		}
	}
	for id := range t.deliveries {
		if !isCommitted[id] {
			v.unexpected = append(v.unexpected, id)
		}
	}
	return v
}

// ok reports whether the run kept the relay's guarantees. Duplicates are
// allowed: they follow a crash, and consumers deduplicate on message_id.
func (v verdict) ok() bool {
	return len(v.lost) == 0 && len(v.violations) == 0 && len(v.unexpected) == 0 && v.malformed == 0
}

// print writes the summary table, then a few examples of each problem.
func (v verdict) print(w io.Writer) {
	t := report.Table{W: w, NameWidth: 17}
	fmt.Fprintln(w, "==================== summary ====================")
	t.Line("committed", v.committed, "events in the outbox table (transactions that committed)")
	t.Line("rolled back", v.rolledBack, "events written then rolled back; %d of them delivered", v.rolledBackDelivered)
	t.Line("delivered", v.delivered, "distinct message_ids received")
	t.Line("duplicates", v.duplicates, "extra deliveries of a message_id (only after a relay crash)")
	t.Line("lost", len(v.lost), "committed but never delivered")
	t.Line("unexpected", len(v.unexpected), "delivered but never committed")
	t.Line("order violations", len(v.violations), "an order's events delivered out of sequence")
	if v.malformed > 0 {
		t.Line("malformed", v.malformed, "bodies that were not an order event")
	}
	t.Examples("lost event_ids", v.lost)
	t.Examples("unexpected message_ids", v.unexpected)
	t.Examples("order violations", v.violations)
	if v.ok() {
		fmt.Fprintln(w, "  RESULT: OK - every committed event delivered, in order; no rolled-back event published")
	} else {
		fmt.Fprintln(w, "  RESULT: FAILED")
	}
}
