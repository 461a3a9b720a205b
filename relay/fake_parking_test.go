package relay_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/relaytest"
)

// startFull runs the relay with the broker's answers held until the first
// window is out, so which rows share the culprit's window is fixed: rows 1
// to Window. Rows of its aggregate in that window are delivered before
// it (a documented limitation); later ones are parked behind it.
func startFull(f *fake) {
	f.t.Helper()
	f.pub.Hold()
	f.run()
	f.until("the first window is out", func() bool { now, _ := f.pub.InFlight(); return now == f.cfg.Window() })
	f.pub.Release()
}

// parkingRows are 60 rows over 6 aggregates; the first is the culprit,
// and its aggregate's next row (the 7th) lies outside a window of 4.
func parkingRows(f *fake) (culprit relay.Row, later, others []int64) {
	added := f.store.Add(rows(60, 6)...)
	for _, r := range added[1:] {
		if r.Aggregate() == added[0].Aggregate() {
			later = append(later, r.ID)
		} else {
			others = append(others, r.ID)
		}
	}
	return added[0], later, others
}

func TestFakeRejectedRowParksOnlyItsAggregate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answer   relaytest.Answer
		policy   relay.DeadRows
		attempts int // when it is dead
	}{
		{"returned, hold", relaytest.Refuse, relay.DeadRowsHold, 3},
		{"returned, skip", relaytest.Refuse, relay.DeadRowsSkip, 3},
		{"invalid, hold", relaytest.Invalid, relay.DeadRowsHold, 1},
		{"invalid, skip", relaytest.Invalid, relay.DeadRowsSkip, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, relay.Config{BatchSize: 2, MaxAttempts: 3, DeadRows: tc.policy})
			culprit, later, others := parkingRows(f)
			f.pub.Decide(failing(culprit.ID, tc.answer, 1000))
			startFull(f)
			f.until("the row is dead", func() bool {
				p := f.store.Parked()
				return len(p) > 0 && p[0].Dead
			})
			f.drained()
			parked := f.store.Parked()
			if p := parked[0]; p.ID != culprit.ID || p.Attempts != tc.attempts {
				t.Errorf("parked first row %d after %d attempts, want row %d dead after %d", p.ID, p.Attempts, culprit.ID, tc.attempts)
			}
			if slices.Contains(ids(f.pub.Delivered()), culprit.ID) {
				t.Error("the rejected row was delivered")
			}
			if tc.policy == relay.DeadRowsHold {
				once(t, f.pub.Delivered(), others)
				var held []int64
				for _, p := range parked[1:] {
					held = append(held, p.ID)
				}
				if !slices.Equal(held, later) {
					t.Errorf("held back %v, want the later rows of its aggregate, %v", held, later)
				}
				return
			}
			f.until("its aggregate goes on, naming the dead row", func() bool {
				p := f.store.Parked()
				return len(p) == 1 && p[0].Reported
			})
			once(t, f.pub.Delivered(), append(slices.Clone(others), later...))
			inOrder(t, f.pub.Delivered())
			// Later rows may be held while the culprit is still being
			// retried; once it is dead, skip lets them go.
			if parked := f.store.Parked(); len(parked) != 1 {
				t.Errorf("parked %v, want only the dead row: under skip its aggregate goes on", parked)
			}
			first := f.pub.Delivered()[slices.Index(ids(f.pub.Delivered()), later[0])]
			if got := header(first, relay.SkippedHeader); got != culprit.EventID {
				t.Errorf("the aggregate's next message names %q in %s, want the dead row's event, %s", got, relay.SkippedHeader, culprit.EventID)
			}
		})
	}
}

func TestFakeParkedRowThatSucceedsReleasesItsAggregateInOrder(t *testing.T) {
	f := newFake(t, relay.Config{BatchSize: 2, MaxAttempts: 5})
	culprit, later, others := parkingRows(f)
	f.pub.Decide(failing(culprit.ID, relaytest.Refuse, 2))
	startFull(f)
	f.drained()
	f.until("every row is delivered", func() bool { return len(f.pub.Delivered()) == 60 })
	once(t, f.pub.Delivered(), append(append([]int64{culprit.ID}, others...), later...))
	inOrder(t, f.pub.Delivered())
	// A held row is unparked once the broker confirmed it, after the
	// delivery the fake saw.
	f.until("nothing is parked", func() bool { return len(f.store.Parked()) == 0 })
}

func TestFakeDroppedRowLetsItsAggregateGoOn(t *testing.T) {
	f := newFake(t, relay.Config{BatchSize: 2})
	culprit, later, others := parkingRows(f)
	f.pub.Decide(failing(culprit.ID, relaytest.Invalid, 1000))
	startFull(f)
	f.drained()
	f.until("the aggregate is held back", func() bool { return len(f.store.Parked()) == 1+len(later) })
	if err := f.store.Drop(culprit.ID); err != nil {
		t.Fatal(err)
	}
	f.until("the held rows are delivered", func() bool { return len(f.pub.Delivered()) == len(others)+len(later) })
	once(t, f.pub.Delivered(), append(slices.Clone(others), later...))
	inOrder(t, f.pub.Delivered())
	first := f.pub.Delivered()[slices.Index(ids(f.pub.Delivered()), later[0])]
	if got := header(first, relay.SkippedHeader); got != culprit.EventID {
		t.Errorf("the first message after the drop names %q, want the dropped row's event, %s", got, culprit.EventID)
	}
}

func TestFakeRowsThatCannotBeMessagesAreDeadUnsent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*relay.Row)
		reason string
	}{
		{"payload over the limit", func(r *relay.Row) { r.Payload = make([]byte, 4096) }, "RELAY_MAX_PAYLOAD_BYTES"},
		{"nested headers", func(r *relay.Row) { r.Headers = []byte(`{"a":{"b":1}}`) }, "header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, relay.Config{BatchSize: 2, MaxPayloadBytes: 1024})
			in := rows(20, 4)
			tc.edit(&in[5])
			added := f.store.Add(in...)
			f.run()
			f.drained()
			p := f.store.Parked()
			if len(p) == 0 || p[0].ID != added[5].ID || !p[0].Dead || p[0].Attempts != 1 {
				t.Fatalf("parked %v, want row %d dead at once", p, added[5].ID)
			}
			if !strings.Contains(strings.ToLower(p[0].Reason), strings.ToLower(tc.reason)) {
				t.Errorf("dead row's reason %q does not name %q", p[0].Reason, tc.reason)
			}
			if slices.Contains(ids(f.pub.Sent()), added[5].ID) {
				t.Error("a row that cannot be a message was sent")
			}
		})
	}
}
