package main

import (
	"fmt"
	"io"
	"strings"
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
	line := func(name string, n int, meaning string) { fmt.Fprintf(w, "  %-17s %6d  %s\n", name, n, meaning) }
	fmt.Fprintln(w, "==================== summary ====================")
	line("committed", v.committed, "events in the outbox table (transactions that committed)")
	line("rolled back", v.rolledBack, fmt.Sprintf("events written then rolled back; %d of them delivered", v.rolledBackDelivered))
	line("delivered", v.delivered, "distinct message_ids received")
	line("duplicates", v.duplicates, "extra deliveries of a message_id (only after a relay crash)")
	line("lost", len(v.lost), "committed but never delivered")
	line("unexpected", len(v.unexpected), "delivered but never committed")
	line("order violations", len(v.violations), "an order's events delivered out of sequence")
	if v.malformed > 0 {
		line("malformed", v.malformed, "bodies that were not an order event")
	}
	examples := func(what string, items []string) {
		if len(items) == 0 {
			return
		}
		if len(items) > 5 {
			items = append(items[:5:5], fmt.Sprintf("... and %d more", len(items)-5))
		}
		fmt.Fprintf(w, "  %s:\n    %s\n", what, strings.Join(items, "\n    "))
	}
	examples("lost event_ids", v.lost)
	examples("unexpected message_ids", v.unexpected)
	examples("order violations", v.violations)
	if v.ok() {
		fmt.Fprintln(w, "  RESULT: OK - every committed event delivered, in order; no rolled-back event published")
	} else {
		fmt.Fprintln(w, "  RESULT: FAILED")
	}
}
