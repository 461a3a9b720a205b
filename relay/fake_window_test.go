package relay_test

import (
	"fmt"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
)

func TestFakeDeliversEveryRowOnceInOrder(t *testing.T) {
	for _, tc := range []struct {
		name             string
		batch, rows, agg int
	}{
		{"one row at a time", 1, 50, 3},
		{"small batches", 7, 300, 5},
		{"one aggregate", 50, 300, 1},
		{"default batch", 0, 1200, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, relay.Config{BatchSize: tc.batch})
			added := f.store.Add(rows(tc.rows, tc.agg)...)
			f.run()
			f.drained()
			once(t, f.pub.Delivered(), idsOf(added))
			inOrder(t, f.pub.Delivered())
			if sent := len(f.pub.Sent()); sent != tc.rows {
				t.Errorf("sent %d messages for %d rows", sent, tc.rows)
			}
		})
	}
}

// fill keeps answers back until want messages are in flight, or every row
// is sent, then answers them, until every row is recorded: each round the
// window is as full as the relay will make it. The publisher holds its
// answers from the start (Hold before run).
func fill(f *fake, want int) {
	f.t.Helper()
	total := len(f.store.Rows())
	for {
		f.until("the window fills", func() bool {
			now, _ := f.pub.InFlight()
			return now >= want || len(f.pub.Sent()) == total
		})
		f.pub.Release()
		if len(f.pub.Sent()) == total {
			break
		}
		f.pub.Hold()
	}
	f.drained()
}

func TestFakeWindowBoundsRowsInFlight(t *testing.T) {
	for _, batch := range []int{1, 5, 50} {
		cfg := relay.Config{BatchSize: batch}
		window := 2 * batch // the documented window: two batches
		t.Run(fmt.Sprintf("batch %d", batch), func(t *testing.T) {
			f := newFake(t, cfg)
			f.store.Add(rows(10*window, 4)...)
			f.pub.Hold()
			f.run()
			fill(f, window)
			if _, most := f.pub.InFlight(); most != window {
				t.Errorf("at most %d messages were in flight at once, want the window, %d (two batches of %d)", most, window, batch)
			}
			for _, c := range f.pub.Calls() {
				if c.Size > batch {
					t.Fatalf("a Publish call sent %d messages, more than a batch (%d)", c.Size, batch)
				}
			}
		})
	}
}

func TestFakeWindowBoundsBytesInFlight(t *testing.T) {
	cfg := relay.Config{BatchBytes: 64 << 10}
	const payload = 10 << 10
	size := (&relay.Row{Payload: make([]byte, payload)}).Size()
	windowBytes := 2 * cfg.BatchBytes // the documented window: two batches' bytes
	want := windowBytes / size
	f := newFake(t, cfg)
	big := rows(10*want, 3)
	for i := range big {
		big[i].Payload = make([]byte, payload)
	}
	f.store.Add(big...)
	f.pub.Hold()
	f.run()
	fill(f, want)
	if _, most := f.pub.InFlight(); most != want {
		t.Errorf("at most %d rows of %d bytes were in flight at once, want %d (the window of %d bytes)", most, size, want, windowBytes)
	}
}

func TestFakeRowLargerThanTheWindowGoesAlone(t *testing.T) {
	cfg := relay.Config{BatchBytes: 64 << 10}
	f := newFake(t, cfg)
	in := rows(7, 2)
	in[3].Payload = make([]byte, 2*cfg.BatchBytes+1) // larger than the window
	added := f.store.Add(in...)
	f.pub.Hold() // the rows before it stay in flight until released
	f.run()
	f.until("the three rows before it are in flight", func() bool { now, _ := f.pub.InFlight(); return now == 3 })
	f.pub.Release()
	f.drained()
	once(t, f.pub.Delivered(), idsOf(added))
	for _, c := range f.pub.Calls() {
		if c.First == added[3].EventID && (c.Size != 1 || c.InFlight != 0) {
			t.Errorf("the row larger than the window went with %d others in its call and %d in flight, want alone", c.Size-1, c.InFlight)
		}
	}
}
