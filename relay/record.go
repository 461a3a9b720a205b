package relay

import (
	"context"
	"errors"
	"time"
)

// record waits for the oldest flight and every later one that is already
// answered, then records the position once for all of them, parking what
// they park in the same transaction. Rows the broker refused alone are
// parked and passed; the first row in doubt stops the position, and ends
// the round with a failure.
func (p *pipeline) record(finish context.Context) error {
	var recorded int
	var failure error
	var park []Parked
	var confirmed []flightDone
	var published [][]Row
	var names []naming
	var bytes int
	pos := p.recorded
	for len(p.window.flights) > 0 {
		f := p.window.flights[0]
		if recorded > 0 && !closed(f.conf.Done()) {
			break
		}
		answers, err := f.conf.Wait(finish)
		n := 0 // leading rows answered
		ok := 0
		for n < len(f.rows) && !answers[n].inDoubt() {
			if answers[n].Refused != nil {
				park = append(park, p.refuse(f.rows[n], answers[n].Refused))
			} else {
				ok++
			}
			n++
		}
		if n < len(f.rows) && p.window.probe && len(f.rows) == 1 && errors.Is(err, ErrRejected) {
			// The row failed alone (a channel exception): it is the
			// culprit. Park it and go on with the rows after it.
			park = append(park, p.refuse(f.rows[0], err))
			p.pub.Reset()
			n, err = 1, nil
		}
		if n > 0 {
			pos = f.rows[n-1].Position()
			recorded += n
			park = append(park, f.park...)
			for _, nm := range f.names {
				switch {
				case nm.index < n && answers[nm.index].Confirmed:
					names = append(names, nm)
				case nm.index < n:
					p.unnamed(nm.agg, nm.ids) // refused: the next one names them
				}
			}
			switch {
			case !f.sent.IsZero() && ok > 0:
				confirmed = append(confirmed, flightDone{ok, time.Since(f.sent)})
				published = append(published, f.rows[:n])
			case f.before:
				confirmed = append(confirmed, flightDone{n, -1}) // its latency was lost with the failure
				published = append(published, f.rows[:n])
			}
		}
		if n < len(f.rows) {
			p.keepConfirmed(f.rows[n:], answers[n:])
			failure = errorf(finish, "publish: %w", err)
			break
		}
		p.window.flights = p.window.flights[1:]
		p.window.inFlight -= len(f.rows)
		p.window.inFlightBytes -= sizeOf(f.rows)
		bytes += sizeOf(f.rows)
		if p.window.probe && !f.sent.IsZero() {
			// The row after a failure was answered: confirmed, the window
			// opens again; refused and parked, the next row is probed.
			p.window.probe = ok == 0
			p.reads.readDue = true
		} else if p.window.probe {
			p.reads.readDue = true // held, not published: probe the next row
		}
	}
	if recorded > 0 {
		p.enqueue(posWrite{pos: pos, rows: recorded, bytes: bytes, park: park, confirmed: confirmed, published: published, names: names})
	}
	return failure
}

// keepConfirmed remembers, after a failure, the rows the broker confirmed
// behind the first one in doubt (rows, answers from there on) and in the
// flights after it that are answered: when they are read again from the
// recorded position, they are recorded without being sent twice.
func (p *pipeline) keepConfirmed(rows []Row, answers []Answer) {
	mark := func(rows []Row, answers []Answer) {
		for i, a := range answers {
			if a.Confirmed {
				p.window.confirmed[rows[i].Position().row()] = true
			}
		}
	}
	mark(rows, answers)
	for _, f := range p.window.flights[1:] {
		if f.sent.IsZero() || !closed(f.conf.Done()) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		answers, _ := f.conf.Wait(ctx)
		cancel()
		mark(f.rows, answers)
	}
}

// flightDone is a confirmed flight, for the Observer.
type flightDone struct {
	rows    int
	latency time.Duration
}
