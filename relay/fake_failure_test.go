package relay_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/relaytest"
)

// failing answers the first `times` attempts at row id with a, and
// confirms everything else. It runs under the publisher's lock, so its
// count needs none of its own.
func failing(id int64, a relaytest.Answer, times int) func(*relay.Message) relaytest.Answer {
	n := 0
	return func(m *relay.Message) relaytest.Answer {
		if m.Headers["outbox_id"].(int64) == id && n < times {
			n++
			return a
		}
		return relaytest.Confirm
	}
}

// sends counts the messages sent per row.
func sends(msgs []relay.Message) map[int64]int {
	n := map[int64]int{}
	for _, id := range ids(msgs) {
		n[id]++
	}
	return n
}

func TestFakeProbeAfterAFailure(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answer   relaytest.Answer
		channels int
	}{
		{"lost channel", relaytest.Doubt, 1},
		{"channel exception", relaytest.Exception, 1},
		{"lost channel, others open", relaytest.Doubt, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := relay.Config{BatchSize: 5}
			f := newFake(t, cfg)
			added := f.store.Add(rows(60, 6)...)
			culprit := added[8]
			f.pub.Channels(tc.channels)
			f.pub.Decide(failing(culprit.ID, tc.answer, 1))
			f.run()
			f.drained()

			once(t, f.pub.Delivered(), idsOf(added))
			inOrder(t, f.pub.Delivered())
			calls := f.pub.Calls()
			after := slices.IndexFunc(calls, func(c relaytest.Call) bool { return c.Resets > 0 })
			if after < 0 {
				t.Fatal("nothing was published after the failure")
			}
			if c := calls[after]; c.Size != 1 || c.First != culprit.EventID {
				t.Errorf("the first call after the failure sent %d messages from %s, want the row in doubt (%s) alone", c.Size, c.First, culprit.EventID)
			}
			if c := calls[after]; c.InFlight != 0 {
				t.Errorf("the probe went with %d messages in flight, want none", c.InFlight)
			}
			resent := 0
			for id, n := range sends(f.pub.Sent()) {
				if n > 2 {
					t.Errorf("row %d was sent %d times, want at most twice", id, n)
				}
				resent += n - 1
			}
			if resent > cfg.Window() {
				t.Errorf("%d rows were sent again, more than the window (%d)", resent, cfg.Window())
			}
			if tc.channels > 1 && resent >= len(added)-int(culprit.ID) {
				t.Errorf("%d rows were sent again although only one of %d channels closed: rows confirmed behind the failure were sent twice", resent, tc.channels)
			}
			if p := f.store.Parked(); len(p) != 0 {
				t.Errorf("parked %v, want nothing: the row succeeded when tried again", p)
			}
		})
	}
}

func TestFakeRowThatFailsAloneIsParked(t *testing.T) {
	cfg := relay.Config{BatchSize: 5, MaxAttempts: 3}
	f := newFake(t, cfg)
	added := f.store.Add(rows(40, 4)...)
	culprit := added[9]
	f.pub.Decide(failing(culprit.ID, relaytest.Exception, 1000))
	f.run()
	f.until("the row is dead", func() bool {
		p := f.store.Parked()
		return len(p) > 0 && p[0].Dead
	})
	f.drained()

	parked := f.store.Parked()
	if p := parked[0]; p.ID != culprit.ID || p.Attempts != cfg.MaxAttempts {
		t.Errorf("parked first row %d after %d attempts, want row %d after %d", p.ID, p.Attempts, culprit.ID, cfg.MaxAttempts)
	}
	var held []int64
	var others []int64
	for _, r := range added {
		switch {
		case r.ID == culprit.ID:
		case r.Aggregate() == culprit.Aggregate() && r.ID > culprit.ID:
			held = append(held, r.ID)
		default:
			others = append(others, r.ID)
		}
	}
	var heldNow []int64
	for _, p := range parked[1:] {
		if p.Attempts != 0 || p.Dead {
			t.Errorf("row %d held behind the dead row has %d attempts (dead %v), want 0", p.ID, p.Attempts, p.Dead)
		}
		heldNow = append(heldNow, p.ID)
	}
	if !slices.Equal(heldNow, held) {
		t.Errorf("held back %v, want the later rows of the dead row's aggregate, %v", heldNow, held)
	}
	once(t, f.pub.Delivered(), others)
	inOrder(t, f.pub.Delivered())
}

func TestFakeStoreFailureRetriesFromThePosition(t *testing.T) {
	for _, op := range []string{"Read", "Record", "Renew"} {
		t.Run(op, func(t *testing.T) {
			f := newFake(t, relay.Config{BatchSize: 10, LeaseTimeout: 100 * time.Millisecond})
			added := f.store.Add(rows(100, 3)...)
			fails := make(chan struct{})
			f.cfg.Hooks.RoundFailed = func(error) {
				select {
				case <-fails:
				default:
					close(fails)
				}
			}
			f.store.Fail(op, errors.New("connection refused"))
			f.run()
			<-fails
			f.store.Fail(op, nil)
			f.drained()
			once(t, dedupe(f.pub.Delivered()), idsOf(added))
			inOrder(t, f.pub.Delivered())
		})
	}
}

// dedupe keeps the first delivery of each message.
func dedupe(msgs []relay.Message) []relay.Message {
	seen := map[string]bool{}
	var out []relay.Message
	for _, m := range msgs {
		if !seen[m.MessageID] {
			seen[m.MessageID] = true
			out = append(out, m)
		}
	}
	return out
}
