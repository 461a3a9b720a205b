package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errStopped ends Run after a clean stop.
var errStopped = errors.New("stopped")

// wakesTrusted is how recent a wake-up must be for the relay to wait for
// the next one instead of lingering: notifications come with every commit
// where a trigger sends them, and never where none does.
const wakesTrusted = time.Second

// retryEvery is how often the leader looks for parked rows whose turn has
// come.
const retryEvery = time.Second

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

// pipeline keeps a sliding window of published rows awaiting confirms: it
// publishes while fewer than Window rows are in flight, and records the
// position as the oldest flights are confirmed. The next batch is read in
// the background meanwhile, so a read never holds up publishing. Reading
// ahead of the recorded position never loses rows: after any failure the
// pipeline discards everything in flight and read, and reads again from the
// recorded position.
type pipeline struct {
	r        *Relay
	cursor   Position // last row published
	flights  []flight
	inFlight int // rows in flights
	// inFlightBytes is what those rows hold (Row.Size), bounded by the
	// window in bytes as inFlight is by the window in rows.
	inFlightBytes int
	// ahead holds rows read after the cursor and not yet published, at
	// most about two batches; reading is the read in progress, which
	// continues from the end of ahead.
	ahead      []Row
	aheadBytes int       // what ahead holds (Row.Size)
	readRows   int       // rows the next read asks for, fewer than BatchSize for large rows
	lastRows   time.Time // when a read last found rows, for Linger
	lastWake   time.Time // when the last wake-up came
	reading    *read
	readDue    bool          // the outbox may hold rows after those read
	idle       time.Duration // next wait for an empty outbox
	timer      *time.Timer
	progressed bool // the last step recorded rows
	// paused is set while the broker blocks publishers.
	paused bool
	// deadline is the local time until which the lease is surely valid;
	// nothing is published after it.
	deadline time.Time
	// lost is closed when the store can no longer vouch for the lease:
	// nothing more is published.
	lost  <-chan struct{}
	renew *time.Timer
	// probe is set after a failure: the next read takes one row, and the
	// window opens again only once that row is confirmed. A row the
	// broker keeps returning is then retried alone, instead of taking a
	// window of later rows with it (and duplicating them) on every
	// retry; if it fails alone, it is the culprit and is parked.
	probe bool
	// parked holds the aggregates with parked rows: their new rows are
	// parked behind them instead of published.
	parked map[Aggregate]bool
	// confirmed holds rows after the recorded position that the broker
	// confirmed before a failure: read again, they are not sent again.
	confirmed map[Position]bool
	// gaps holds, per aggregate, the rows it went on without that no
	// message has named yet: the next message names them. naming holds
	// those named by a message not yet recorded.
	gaps, naming map[Aggregate][]Skipped
	// retry fires when parked rows may be due; retrying waits for the
	// window to drain (retryWanted), so no held row is still unrecorded.
	retry       *time.Timer
	retryWanted bool
	// writing is the position write in progress, answered on written;
	// queued is the next, merged from every record that came meanwhile.
	// Writing in the background keeps the database's commit off the
	// publishing path: the loop goes on recording confirms and publishing
	// into the rest of the window, while the rows being written still hold
	// their room (see room).
	writing  *posWrite
	written  chan error
	queued   *posWrite
	writeCtx context.Context // outlives a stop: confirmed rows are worth recording
}

// step does one unit of work: read and publish one batch, record the
// flights that are confirmed, retry parked rows, or wait for one of those.
func (p *pipeline) step(ctx, finish context.Context) error {
	p.progressed = false
	p.r.cfg.Observer.Alive()
	stopping := ctx.Err() != nil
	if stopping && len(p.flights) == 0 && p.writing == nil {
		return errStopped
	}
	blocked, blockChange := p.r.pub.Blocked()
	p.pause(blocked)
	if !stopping && closed(p.lost) {
		return ErrLeaseLost
	}
	if !stopping && p.retryWanted && len(p.flights) == 0 && p.writing == nil {
		p.retryWanted = false
		p.retry.Reset(retryEvery)
		if p.expired() {
			return ErrLeaseLost
		}
		if err := p.retryParked(ctx); err != nil {
			return err
		}
		p.readDue = true
		return nil
	}
	if !stopping && !p.retryWanted && p.hasRoom() && (len(p.ahead) > 0 || p.readDue) {
		if p.expired() {
			return ErrLeaseLost // not renewed in time: another replica may lead now
		}
		if !p.paused && len(p.ahead) > 0 {
			return p.publish(ctx)
		}
	}
	if !stopping && !p.paused && p.readDue && p.reading == nil && len(p.ahead) < p.r.cfg.BatchSize && p.aheadBytes < p.r.cfg.BatchBytes {
		p.startRead(ctx)
	}
	var read <-chan readResult
	if p.reading != nil {
		read = p.reading.done
	}
	var done <-chan struct{}
	if len(p.flights) > 0 {
		done = p.flights[0].conf.Done()
	}
	var wake, stop <-chan struct{}
	var tick, retry <-chan time.Time
	if !stopping {
		stop = ctx.Done()
		if !p.paused && len(p.parked) > 0 { // nothing parked, nothing to retry
			retry = p.retry.C
		}
		if !p.readDue {
			wake = p.r.cfg.Wake
			tick = p.pollTimer()
		}
	}
	var lost <-chan struct{}
	if !stopping {
		lost = p.lost
	}
	select {
	case <-lost:
		return ErrLeaseLost
	case <-p.renew.C:
		return p.renewLease(finish)
	case err := <-p.written:
		return p.wrote(err)
	case res := <-read:
		return p.readDone(ctx, res)
	case <-done:
		return p.record(finish)
	case <-finish.Done():
		if len(p.flights) == 0 {
			p.settle() // out of time, but the write is nearly done
			return nil
		}
		return p.record(finish) // reports the shutdown timeout
	case <-retry:
		p.retryWanted = true
	case <-blockChange:
	case <-tick:
		p.readDue = true
	case <-wake:
		p.readDue = true
		p.lastWake = time.Now()
	case <-stop:
	}
	return nil
}

// expired reports whether the lease can no longer be vouched for: not
// renewed in time (another replica may lead now), or the store lost the
// session that proves this replica alive.
func (p *pipeline) expired() bool {
	return time.Now().After(p.deadline) || closed(p.lost)
}

// pause follows the broker's resource alarm. It is checked at every step,
// not only when there is room to publish: a broker that blocks stops
// reading and confirming, so the window may stay full until it unblocks.
func (p *pipeline) pause(blocked bool) {
	if blocked == p.paused {
		return
	}
	p.paused = blocked
	p.r.cfg.Observer.Blocked(blocked)
	if blocked {
		p.r.log.Warn("paused publishing: the broker is blocking publishers (resource alarm); nothing more is read meanwhile")
	} else {
		p.r.log.Info("resumed publishing: the broker unblocked")
	}
}

// blocked reports whether the broker blocks publishers now.
func (p *pipeline) blocked() bool {
	blocked, _ := p.r.pub.Blocked()
	return blocked
}

// read is a read of the outbox running in the background.
type read struct {
	done   chan readResult
	cancel context.CancelFunc
	asked  int // rows asked for
}

type readResult struct {
	rows []Row
	err  error
}

// startRead reads a batch after the last row read, in the background.
func (p *pipeline) startRead(ctx context.Context) {
	from := p.cursor
	if n := len(p.ahead); n > 0 {
		from = p.ahead[n-1].Position()
	}
	ctx, cancel := context.WithCancel(ctx)
	b := p.r.cfg.batch()
	if p.readRows > 0 {
		b.Rows = p.readRows
	}
	rd := &read{done: make(chan readResult, 1), cancel: cancel, asked: b.Rows}
	p.reading = rd
	go func() {
		rows, err := p.r.store.Read(ctx, from, b)
		rd.done <- readResult{rows, err}
	}()
}

// readDone takes a finished read's rows and decides when to read next: at
// once after a full batch, after MinPoll after a partial one or an empty
// one within Linger of the last rows, and with growing waits while the
// outbox stays empty longer.
func (p *pipeline) readDone(ctx context.Context, res readResult) error {
	cfg := p.r.cfg
	asked := p.reading.asked
	p.reading.cancel()
	p.reading = nil
	if res.err != nil {
		if ctx.Err() != nil {
			return nil // stopping; nothing new is in flight
		}
		return errorf(ctx, "read outbox: %w", storeError{res.err})
	}
	if len(p.ahead) == 0 {
		p.ahead = res.rows
	} else {
		p.ahead = append(p.ahead, res.rows...)
	}
	bytes := sizeOf(res.rows)
	p.aheadBytes += bytes
	if n := len(res.rows); n > 0 {
		// Ask next time for as many rows as BatchBytes holds at the size
		// of these: rows past it would be received only to be dropped.
		p.readRows = min(max(cfg.BatchBytes/(bytes/n), 1), cfg.BatchSize)
	}
	now := time.Now()
	if len(res.rows) > 0 {
		p.lastRows = now
	}
	switch {
	case len(res.rows) == asked || 2*bytes >= cfg.BatchBytes:
		p.idle = cfg.MinPoll // more are likely waiting: read again now
	case len(res.rows) > 0:
		p.readDue, p.idle = false, cfg.MinPoll
		p.armPoll(cfg.MinPoll)
	case now.Sub(p.lastRows) < cfg.Linger && now.Sub(p.lastWake) > wakesTrusted:
		// Traffic paused for a moment: keep looking closely, unless
		// wake-ups come (a NOTIFY trigger), which say when to look.
		p.readDue = false
		p.armPoll(cfg.MinPoll)
	default:
		p.readDue = false
		p.armPoll(p.idle)
		p.idle = min(p.idle*2, cfg.PollInterval)
		if !p.publishing() && len(p.ahead) == 0 {
			// Idle: make sure the broker is there for the next row.
			if err := p.r.pub.Connect(ctx); err != nil && ctx.Err() == nil {
				return errorf(ctx, "connect to the broker: %w", err)
			}
		}
	}
	return nil
}

// stopRead abandons the read in progress, if any, and waits for it to end.
func (p *pipeline) stopRead() {
	if p.reading != nil {
		p.reading.cancel()
		<-p.reading.done
		p.reading = nil
	}
}

// room is how many more rows may be published now: the window counts
// every row published and not yet recorded, confirmed rows whose position
// write is under way included, so a crash republishes at most a window.
// After a failure only one row is out at a time until it is confirmed (see
// probe).
func (p *pipeline) room() int {
	if p.probe {
		if p.publishing() {
			return 0
		}
		return 1
	}
	n := p.r.cfg.window() - p.inFlight
	if p.writing != nil {
		n -= p.writing.rows
	}
	if p.queued != nil {
		n -= p.queued.rows
	}
	return n
}

// hasRoom reports whether more may be published now: the next row read
// ahead fits in the window, in rows and in bytes. A row larger than the
// whole window in bytes goes once nothing else is in flight.
func (p *pipeline) hasRoom() bool {
	if p.room() <= 0 {
		return false
	}
	if p.inFlight == 0 {
		return true
	}
	need := 1
	if len(p.ahead) > 0 {
		need = p.ahead[0].Size()
	}
	return p.roomBytes() >= need
}

// roomBytes is how many more bytes of rows may be published now, as room
// is for rows.
func (p *pipeline) roomBytes() int {
	n := 2*p.r.cfg.BatchBytes - p.inFlightBytes
	if p.writing != nil {
		n -= p.writing.bytes
	}
	if p.queued != nil {
		n -= p.queued.bytes
	}
	return n
}

func sizeOf(rows []Row) int {
	n := 0
	for i := range rows {
		n += rows[i].Size()
	}
	return n
}

// publish publishes the rows read ahead that fit in the window, except rows
// of parked aggregates and rows that cannot become messages, which are
// parked when the position passes them, and rows the broker confirmed
// before a failure, which are recorded without being sent again.
func (p *pipeline) publish(ctx context.Context) error {
	cfg := p.r.cfg
	n := min(p.room(), len(p.ahead), cfg.BatchSize)
	// Within the window in bytes too; a row larger than all of it goes
	// alone, once nothing else is in flight.
	for bytes, i := p.roomBytes(), 0; i < n; i++ {
		if bytes -= p.ahead[i].Size(); bytes < 0 && (i > 0 || p.inFlight > 0) {
			n = i
		}
	}
	if n == 0 {
		return nil // cannot happen: hasRoom saw the first row fit
	}
	rows := p.ahead[:n:n]
	p.ahead = p.ahead[n:]
	p.aheadBytes -= sizeOf(rows)

	start := 0 // first row not yet in a flight
	msgs := make([]Message, 0, len(rows))
	var names []naming
	for i := range rows {
		row := &rows[i]
		var park []Parked
		before := false
		switch {
		case p.confirmed[row.Position()]:
			delete(p.confirmed, row.Position())
			before = true
		case p.parked[row.Aggregate()]:
			park = []Parked{{Row: *row}}
		case row.PayloadSize > cfg.MaxPayloadBytes:
			park = []Parked{p.refuse(*row, fmt.Errorf("%w: row %d: its payload of %d bytes is larger than the relay's limit of %d (RELAY_MAX_PAYLOAD_BYTES)",
				ErrInvalid, row.ID, row.PayloadSize, cfg.MaxPayloadBytes))}
		default:
			m, err := NewMessage(row, cfg.Exchange)
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

// refuse parks row, which the broker refused or which cannot become a
// message, after its first failed attempt (dead at once if no retry can
// help), and holds its aggregate's later rows behind it.
func (p *pipeline) refuse(row Row, reason error) Parked {
	pk := p.r.cfg.failedOnce(row, reason)
	if errors.Is(reason, ErrInvalid) {
		p.r.cfg.Observer.Failed(FailureInvalid)
	} else {
		p.r.cfg.Observer.Failed(FailureRejected)
	}
	if pk.Dead {
		p.died(row, 1, reason)
	} else {
		p.r.log.Warn("row rejected: parked, its aggregate waits behind it, others go on",
			"id", row.ID, "aggregate_type", row.AggregateType, "aggregate_id", row.AggregateID, "reason", reason)
	}
	if !pk.Dead || p.r.cfg.DeadRows == DeadRowsHold {
		p.parked[row.Aggregate()] = true
	}
	return pk
}

// push publishes rows as one flight.
func (p *pipeline) push(ctx context.Context, rows []Row, msgs []Message, names []naming) {
	if len(rows) == 0 {
		return
	}
	// A batch that was read is sent whole even if a stop arrives now; the
	// stop then waits for its confirms like for any other flight.
	p.flights = append(p.flights, flight{rows: rows, conf: p.r.pub.Publish(context.WithoutCancel(ctx), msgs),
		sent: time.Now(), names: names})
	p.inFlight += len(rows)
	p.inFlightBytes += sizeOf(rows)
	p.r.cfg.Observer.Sent(len(msgs))
	p.cursor = rows[len(rows)-1].Position()
}

// hold queues rows that need no broker, to be recorded in order with the
// flights around them: rows to park, or rows confirmed before a failure.
func (p *pipeline) hold(rows []Row, park []Parked, before bool) {
	p.flights = append(p.flights, flight{rows: rows, conf: answered(len(rows)), park: park, before: before})
	p.inFlight += len(rows)
	p.inFlightBytes += sizeOf(rows)
	p.cursor = rows[len(rows)-1].Position()
}

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
	pos := p.r.pos
	for len(p.flights) > 0 {
		f := p.flights[0]
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
		if n < len(f.rows) && p.probe && len(f.rows) == 1 && errors.Is(err, ErrRejected) {
			// The row failed alone (a channel exception): it is the
			// culprit. Park it and go on with the rows after it.
			park = append(park, p.refuse(f.rows[0], err))
			p.r.pub.Reset()
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
		p.flights = p.flights[1:]
		p.inFlight -= len(f.rows)
		p.inFlightBytes -= sizeOf(f.rows)
		bytes += sizeOf(f.rows)
		if p.probe && !f.sent.IsZero() {
			// The row after a failure was answered: confirmed, the window
			// opens again; refused and parked, the next row is probed.
			p.probe = ok == 0
			p.readDue = true
		} else if p.probe {
			p.readDue = true // held, not published: probe the next row
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
				p.confirmed[rows[i].Position()] = true
			}
		}
	}
	mark(rows, answers)
	for _, f := range p.flights[1:] {
		if f.sent.IsZero() || !closed(f.conf.Done()) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		answers, _ := f.conf.Wait(ctx)
		cancel()
		mark(f.rows, answers)
	}
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
	case p.writing == nil:
		p.startWrite(w)
	case p.queued == nil:
		p.queued = &w
	default:
		q := p.queued
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
	p.writing = &w
	done := make(chan error, 1)
	p.written = done
	ctx := p.writeCtx
	go func() {
		ctx, cancel := context.WithTimeout(ctx, writeTimeout)
		defer cancel()
		if reported := w.reportedIDs(); len(w.park) > 0 || len(reported) > 0 {
			done <- p.r.store.RecordParked(ctx, w.pos, w.park, reported)
		} else {
			done <- p.r.store.Record(ctx, w.pos)
		}
	}()
}

// wrote ends the write in progress with its result and starts the queued
// one. After a failure the queued write is dropped: its rows are published
// again from the recorded position.
func (p *pipeline) wrote(err error) error {
	w := p.writing
	p.writing, p.written = nil, nil
	if err != nil {
		p.queued = nil
		return fmt.Errorf("record position %s: %w", w.pos, storeError{err})
	}
	p.r.pos = w.pos
	p.progressed = true
	for _, c := range w.confirmed {
		p.r.cfg.Observer.Confirmed(c.rows, c.latency)
	}
	now := time.Now()
	for _, rows := range w.published {
		p.r.unlocked(rows, now)
	}
	for _, nm := range w.names {
		p.reported(nm.agg, nm.ids)
	}
	p.r.log.Debug("recorded", "position", w.pos.String(), "rows", w.rows, "parked", len(w.park))
	if h := p.r.cfg.Hooks.Recorded; h != nil {
		h(w.pos, w.rows)
	}
	if q := p.queued; q != nil {
		p.queued = nil
		p.startWrite(*q)
	}
	return nil
}

// settle waits for the position writes in progress and queued, so that
// the recorded position is final.
func (p *pipeline) settle() {
	for p.writing != nil {
		if err := p.wrote(<-p.written); err != nil {
			p.r.log.Debug("position write failed; its rows will be published again", "err", err)
		}
	}
}

// renewLease extends the lease and moves the deadline; the timer is armed
// again whatever happens, so a failed renewal is retried.
func (p *pipeline) renewLease(ctx context.Context) error {
	t0 := time.Now()
	state := "publishing"
	if p.paused {
		state = "paused: the broker is blocking publishers"
	}
	err := p.r.store.Renew(ctx, state)
	if err == nil {
		p.deadline = t0.Add(p.r.cfg.leaseValid())
		p.renew.Reset(p.r.cfg.renewEvery())
		return nil
	}
	p.renew.Reset(p.r.cfg.renewEvery() / 4) // retry soon, before the deadline passes
	if errors.Is(err, ErrLeaseLost) {
		return err
	}
	return errorf(ctx, "renew lease: %w", storeError{err})
}

// flightDone is a confirmed flight, for the Observer.
type flightDone struct {
	rows    int
	latency time.Duration
}

// reset discards everything in flight after a failure: publishing resumes
// from the recorded position, on a fresh channel. Rows held in discarded
// flights were not parked; they are read again.
func (p *pipeline) reset() {
	p.settle()
	p.r.pub.Reset()
	p.stopRead()
	p.flights, p.inFlight, p.inFlightBytes = nil, 0, 0
	p.ahead, p.aheadBytes = nil, 0
	p.cursor = p.r.pos
	p.readDue = true
	p.probe = true
	// What messages in doubt named is named again by the next ones.
	for agg, named := range p.naming {
		p.gaps[agg] = append(p.gaps[agg], named...)
	}
	clear(p.naming)
}

// publishing reports whether a flight that went to the broker is out.
func (p *pipeline) publishing() bool {
	for _, f := range p.flights {
		if !f.sent.IsZero() {
			return true
		}
	}
	return false
}

func (p *pipeline) armPoll(d time.Duration) {
	if p.timer == nil {
		p.timer = time.NewTimer(d)
		return
	}
	p.timer.Reset(d)
}

func (p *pipeline) pollTimer() <-chan time.Time {
	if p.timer == nil {
		return nil
	}
	return p.timer.C
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

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
