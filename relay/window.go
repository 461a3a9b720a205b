package relay

import (
	"context"
	"time"
)

// window is what is in flight: published rows awaiting the broker's
// answers, oldest first.
type window struct {
	flights  []flight
	inFlight int // rows in flights
	// inFlightBytes is what those rows hold (Row.Size), bounded by the
	// window in bytes as inFlight is by the window in rows.
	inFlightBytes int
	cursor        Position // last row published
	// probe is set after a failure: the next read takes one row, and the
	// window opens again only once that row is confirmed. A row the
	// broker keeps returning is then retried alone, instead of taking a
	// window of later rows with it (and duplicating them) on every
	// retry; if it fails alone, it is the culprit and is parked.
	probe bool
	// confirmed holds rows after the recorded position that the broker
	// confirmed before a failure: read again, they are not sent again.
	// Keyed by the rows' identity (Position.row): the store's note may
	// differ when a row is read again.
	confirmed map[Position]bool
}

// flight is one Publish call awaiting its confirms, or rows that need no
// broker, recorded when the position passes them (then conf is answered
// already and sent is zero): rows to park, rows confirmed before.
type flight struct {
	rows []Row
	conf Confirmation
	park []Parked
	sent time.Time // when Publish was called; zero for rows that need no broker
	// names are the messages that carry SkippedHeader: once one is
	// confirmed and recorded, the rows it names are reported.
	names []naming
	// before: rows the broker confirmed before a failure, recorded now
	// without being sent again; they count as published.
	before bool
}

// naming is a message that names skipped rows: its index in the flight,
// its aggregate and the rows' ids.
type naming struct {
	index int
	agg   Aggregate
	ids   []int64
}

// room is how many more rows may be published now: the window counts
// every row published and not yet recorded, confirmed rows whose position
// write is under way included, so a crash republishes at most a window.
// After a failure only one row is out at a time until it is confirmed (see
// probe).
func (p *pipeline) room() int {
	if p.window.probe {
		if p.publishing() {
			return 0
		}
		return 1
	}
	rows, _ := p.writes.holding()
	return p.cfg.Window() - p.window.inFlight - rows
}

// hasRoom reports whether more may be published now: the next row read
// ahead fits in the window, in rows and in bytes. A row larger than the
// whole window in bytes goes once nothing else is in flight.
func (p *pipeline) hasRoom() bool {
	if p.room() <= 0 {
		return false
	}
	if p.window.inFlight == 0 {
		return true
	}
	need := 1
	if len(p.reads.ahead) > 0 {
		need = p.reads.ahead[0].Size()
	}
	return p.roomBytes() >= need
}

// roomBytes is how many more bytes of rows may be published now, as room
// is for rows.
func (p *pipeline) roomBytes() int {
	_, bytes := p.writes.holding()
	return p.cfg.WindowBytes() - p.window.inFlightBytes - bytes
}

// publishing reports whether a flight that went to the broker is out.
func (p *pipeline) publishing() bool {
	for _, f := range p.window.flights {
		if !f.sent.IsZero() {
			return true
		}
	}
	return false
}

func sizeOf(rows []Row) int {
	n := 0
	for i := range rows {
		n += rows[i].Size()
	}
	return n
}

// answered is the Confirmation of n rows that need no broker: all count
// as answered.
type answered int

func (a answered) Done() <-chan struct{} { return closedChan }

func (a answered) Wait(context.Context) ([]Answer, error) {
	answers := make([]Answer, a)
	for i := range answers {
		answers[i].Confirmed = true
	}
	return answers, nil
}
