package relay

import (
	"context"
	"fmt"
	"time"
)

// writes is the position write in progress, answered on written, and
// queued, the next, merged from every record that came meanwhile. Writing
// in the background keeps the database's commit off the publishing path:
// the loop goes on recording confirms and publishing into the rest of the
// window, while the rows being written still hold their room (see room).
type writes struct {
	writing  *posWrite
	written  chan error
	queued   *posWrite
	writeCtx context.Context // outlives a stop: confirmed rows are worth recording
}

// holding returns the rows, and their bytes, of the position writes in
// progress and queued: they hold their room in the window until written.
func (w *writes) holding() (rows, bytes int) {
	for _, pw := range []*posWrite{w.writing, w.queued} {
		if pw != nil {
			rows, bytes = rows+pw.rows, bytes+pw.bytes
		}
	}
	return rows, bytes
}

// posWrite is a position to record, the rows it parks in the same
// transaction, and what to report once it is written.
type posWrite struct {
	pos       Position
	rows      int
	bytes     int // what the rows hold, for the window in bytes
	park      []Parked
	confirmed []flightDone
	published [][]Row // the rows the broker confirmed, for the lock report
	names     []naming
}

// reportedIDs are the skipped rows the write's messages named.
func (w *posWrite) reportedIDs() []int64 {
	var ids []int64
	for _, nm := range w.names {
		ids = append(ids, nm.ids...)
	}
	return ids
}

// writeTimeout bounds one position write.
const writeTimeout = 10 * time.Second

// enqueue writes w in the background, or queues it behind the write in
// progress, merged with what is queued already: only the newest position
// needs writing, with every row parked on the way.
func (p *pipeline) enqueue(w posWrite) {
	switch {
	case p.writes.writing == nil:
		p.startWrite(w)
	case p.writes.queued == nil:
		p.writes.queued = &w
	default:
		q := p.writes.queued
		q.pos = w.pos
		q.rows += w.rows
		q.bytes += w.bytes
		q.park = append(q.park, w.park...)
		q.confirmed = append(q.confirmed, w.confirmed...)
		q.published = append(q.published, w.published...)
		q.names = append(q.names, w.names...)
	}
}

func (p *pipeline) startWrite(w posWrite) {
	p.writes.writing = &w
	done := make(chan error, 1)
	p.writes.written = done
	ctx := p.writes.writeCtx
	go func() {
		ctx, cancel := context.WithTimeout(ctx, writeTimeout)
		defer cancel()
		if reported := w.reportedIDs(); len(w.park) > 0 || len(reported) > 0 {
			done <- p.store.RecordParked(ctx, w.pos, w.park, reported)
		} else {
			done <- p.store.Record(ctx, w.pos)
		}
	}()
}

// wrote ends the write in progress with its result and starts the queued
// one. After a failure the queued write is dropped: its rows are published
// again from the recorded position.
func (p *pipeline) wrote(err error) error {
	w := p.writes.writing
	p.writes.writing, p.writes.written = nil, nil
	if err != nil {
		p.writes.queued = nil
		return fmt.Errorf("record position %s: %w", w.pos, storeError{err})
	}
	p.recorded = w.pos
	p.progressed = true
	for _, c := range w.confirmed {
		p.cfg.Observer.Confirmed(c.rows, c.latency)
	}
	now := time.Now()
	for _, rows := range w.published {
		p.published(rows, now)
	}
	for _, nm := range w.names {
		p.reported(nm.agg, nm.ids)
	}
	p.log.Debug("recorded", "position", w.pos.String(), "rows", w.rows, "parked", len(w.park))
	if h := p.cfg.Hooks.Recorded; h != nil {
		h(w.pos, w.rows)
	}
	if q := p.writes.queued; q != nil {
		p.writes.queued = nil
		p.startWrite(*q)
	}
	return nil
}

// settle waits for the position writes in progress and queued, so that
// the recorded position is final.
func (p *pipeline) settle() {
	for p.writes.writing != nil {
		if err := p.wrote(<-p.writes.written); err != nil {
			p.log.Debug("position write failed; its rows will be published again", "err", err)
		}
	}
}
