package relay

import (
	"context"
	"time"
)

// publish publishes the rows read ahead that fit in the window, except rows
// of parked aggregates and rows that cannot become messages, which are
// parked when the position passes them, and rows the broker confirmed
// before a failure, which are recorded without being sent again.
func (p *pipeline) publish(ctx context.Context) error {
	cfg := p.cfg
	n := min(p.room(), len(p.reads.ahead), cfg.BatchSize)
	// Within the window in bytes too; a row larger than all of it goes
	// alone, once nothing else is in flight.
	for bytes, i := p.roomBytes(), 0; i < n; i++ {
		if bytes -= p.reads.ahead[i].Size(); bytes < 0 && (i > 0 || p.window.inFlight > 0) {
			n = i
		}
	}
	if n == 0 {
		return nil // cannot happen: hasRoom saw the first row fit
	}
	rows := p.reads.ahead[:n:n]
	p.reads.ahead = p.reads.ahead[n:]
	p.reads.aheadBytes -= sizeOf(rows)

	start := 0 // first row not yet in a flight
	msgs := make([]Message, 0, len(rows))
	var names []naming
	for i := range rows {
		row := &rows[i]
		var park []Parked
		before := false
		switch {
		case p.window.confirmed[row.Position().row()]:
			delete(p.window.confirmed, row.Position().row())
			before = true
		case p.heldBack(row):
			park = []Parked{{Row: *row}}
		default:
			m, err := cfg.message(row)
			if err == nil {
				if ids := p.nameSkipped(&m, nil); ids != nil {
					names = append(names, naming{i - start, m.Aggregate, ids})
				}
				msgs = append(msgs, m)
				continue
			}
			park = []Parked{p.refuse(*row, err)}
		}
		p.push(ctx, rows[start:i], msgs, names)
		msgs, names = msgs[len(msgs):], nil
		p.hold(rows[i:i+1], park, before)
		start = i + 1
	}
	p.push(ctx, rows[start:], msgs, names)
	return nil
}

// push publishes rows as one flight.
func (p *pipeline) push(ctx context.Context, rows []Row, msgs []Message, names []naming) {
	if len(rows) == 0 {
		return
	}
	// A batch that was read is sent whole even if a stop arrives now; the
	// stop then waits for its confirms like for any other flight.
	p.window.flights = append(p.window.flights, flight{rows: rows, conf: p.pub.Publish(context.WithoutCancel(ctx), msgs),
		sent: time.Now(), names: names})
	p.window.inFlight += len(rows)
	p.window.inFlightBytes += sizeOf(rows)
	p.cfg.Observer.Sent(len(msgs))
	p.window.cursor = rows[len(rows)-1].Position()
}

// hold queues rows that need no broker, to be recorded in order with the
// flights around them: rows to park, or rows confirmed before a failure.
func (p *pipeline) hold(rows []Row, park []Parked, before bool) {
	p.window.flights = append(p.window.flights, flight{rows: rows, conf: answered(len(rows)), park: park, before: before})
	p.window.inFlight += len(rows)
	p.window.inFlightBytes += sizeOf(rows)
	p.window.cursor = rows[len(rows)-1].Position()
}
