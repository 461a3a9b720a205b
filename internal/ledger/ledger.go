// Package ledger checks delivery guarantees end to end, the way RabbitMQ's
// Jepsen suite does: it records what writers committed to the outbox and
// what consumers received, and counts lost, unexpected, duplicated and
// out-of-order events against each other.
//
// Events carry their aggregate and a per-aggregate sequence number in the
// payload ({"agg":"a1","seq":7}). Writers assign sequence numbers in commit
// order per aggregate, so the first delivery of each event must arrive in
// sequence order.
package ledger

import (
	"encoding/json"
	"fmt"
	"sync"
)

// Payload is the body of every event the ledger tracks.
type Payload struct {
	Agg string `json:"agg"`
	Seq int    `json:"seq"`
}

// Ledger is safe for concurrent use.
type Ledger struct {
	mu         sync.Mutex
	committed  map[string]Payload // event id -> payload
	rolledBack int
	delivered  map[string]int // event id -> deliveries
	next       map[string]int // aggregate -> next sequence number expected first
	violations []string
	badBodies  int
}

// New returns an empty ledger.
func New() *Ledger {
	return &Ledger{committed: map[string]Payload{}, delivered: map[string]int{}, next: map[string]int{}}
}

// Committed records an event whose transaction committed.
func (l *Ledger) Committed(eventID string, p Payload) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.committed[eventID] = p
}

// RolledBack counts an event whose transaction rolled back.
func (l *Ledger) RolledBack() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rolledBack++
}

// Delivered records one delivery of a message.
func (l *Ledger) Delivered(messageID string, body []byte) {
	var p Payload
	err := json.Unmarshal(body, &p)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.badBodies++
		return
	}
	l.delivered[messageID]++
	if l.delivered[messageID] > 1 {
		return // a duplicate: order is judged on first deliveries
	}
	if want := l.next[p.Agg]; p.Seq != want {
		if len(l.violations) < 10 {
			l.violations = append(l.violations, fmt.Sprintf("aggregate %s: first delivery of seq %d, want %d", p.Agg, p.Seq, want))
		} else {
			l.violations = append(l.violations, "")
		}
	}
	if p.Seq >= l.next[p.Agg] {
		l.next[p.Agg] = p.Seq + 1
	}
}

// Distinct returns how many different messages were delivered.
func (l *Ledger) Distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.delivered)
}

// CommittedCount returns how many events were committed.
func (l *Ledger) CommittedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.committed)
}

// Lost returns up to n committed events never delivered.
func (l *Ledger) Lost(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id := range l.committed {
		if l.delivered[id] == 0 && len(ids) < n {
			ids = append(ids, id)
		}
	}
	return ids
}

// Report is the verdict.
type Report struct {
	Committed       int // events committed
	RolledBack      int // events rolled back
	Delivered       int // deliveries, duplicates included
	Lost            int // committed, never delivered
	Unexpected      int // delivered, never committed
	Duplicates      int // deliveries beyond the first
	OrderViolations int // first deliveries out of per-aggregate order
	BadBodies       int // deliveries whose body was not a Payload
	Examples        []string
}

// Report compares what was committed with what was delivered.
func (l *Ledger) Report() Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Report{Committed: len(l.committed), RolledBack: l.rolledBack, OrderViolations: len(l.violations), BadBodies: l.badBodies}
	for _, v := range l.violations {
		if v != "" {
			r.Examples = append(r.Examples, v)
		}
	}
	for id, n := range l.delivered {
		r.Delivered += n
		r.Duplicates += n - 1
		if _, ok := l.committed[id]; !ok {
			r.Unexpected++
		}
	}
	for id := range l.committed {
		if l.delivered[id] == 0 {
			r.Lost++
			if r.Lost <= 3 {
				r.Examples = append(r.Examples, "lost "+id)
			}
		}
	}
	return r
}

// OK reports whether nothing was lost, unexpected, unparsable or out of
// order. Duplicates are judged by the caller against its fault count.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Unexpected == 0 && r.OrderViolations == 0 && r.BadBodies == 0
}

func (r Report) String() string {
	return fmt.Sprintf("committed %d (rolled back %d), delivered %d: lost %d, unexpected %d, duplicates %d, order violations %d, bad bodies %d %v",
		r.Committed, r.RolledBack, r.Delivered, r.Lost, r.Unexpected, r.Duplicates, r.OrderViolations, r.BadBodies, r.Examples)
}
