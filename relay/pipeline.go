package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// errStopped ends Run after a clean stop.
var errStopped = errors.New("stopped")

// errHandedOver ends a term whose share of the work changes, once
// everything in flight is recorded.
var errHandedOver = errors.New("handed over")

// pipeline keeps a sliding window of published rows awaiting confirms: it
// publishes while fewer than Window rows are in flight, and records the
// position as the oldest flights are confirmed. The next batch is read in
// the background meanwhile, so a read never holds up publishing. Reading
// ahead of the recorded position never loses rows: after any failure the
// pipeline discards everything in flight and read, and reads again from the
// recorded position.
//
// One pipeline serves one term of leadership; its state is grouped by
// concept, each with the file that works it: window (window.go), reads
// (readahead.go), writes (poswrite.go), parking (parking.go, retry.go,
// skipped.go) and lease (lease.go).
type pipeline struct {
	cfg   Config
	store Store
	pub   Publisher
	log   *slog.Logger
	// recorded is the position recorded in the store; the relay reads it
	// after every step.
	recorded Position
	// published is told of every row recorded as published, for the
	// ordering-lock report.
	published func(rows []Row, now time.Time)

	window  window
	reads   reads
	writes  writes
	parking parking
	lease   lease

	progressed bool // the last step recorded rows
	paused     bool // the broker blocks publishers
	// handingOver is set when the store asks for a hand-over: the term
	// ends as a clean stop does, without the relay stopping.
	handingOver bool
}

// newPipeline returns the pipeline for a term of leadership that starts at
// t. ctx is the relay's: position writes outlive its end, since confirmed
// rows are worth recording.
func newPipeline(ctx context.Context, cfg Config, store Store, pub Publisher, t term, published func([]Row, time.Time)) *pipeline {
	p := &pipeline{cfg: cfg, store: store, pub: pub, log: cfg.Logger, recorded: t.pos, published: published}
	p.window = window{cursor: t.pos, confirmed: map[Position]bool{}}
	p.reads = reads{readDue: true, idle: cfg.MinPoll}
	p.writes = writes{writeCtx: context.WithoutCancel(ctx)}
	p.parking = newParking(t.parked, t.gaps)
	p.lease = lease{deadline: t.deadline, lost: t.lost, renew: time.NewTimer(cfg.renewEvery())}
	return p
}

// close stops the pipeline's timers and its read; the relay calls it when
// the term ends.
func (p *pipeline) close() {
	p.lease.renew.Stop()
	p.parking.retry.Stop()
	p.stopRead()
	if p.paused { // the next term of leadership starts unpaused
		p.cfg.Observer.Blocked(false)
	}
}

// step does one unit of work: read and publish one batch, record the
// flights that are confirmed, retry parked rows, or wait for one of those.
func (p *pipeline) step(ctx, finish context.Context) error {
	p.progressed = false
	p.cfg.Observer.Alive()
	stopping := ctx.Err() != nil || p.handingOver
	if stopping && len(p.window.flights) == 0 && p.writes.writing == nil {
		if ctx.Err() == nil {
			return errHandedOver
		}
		return errStopped
	}
	blocked, blockChange := p.pub.Blocked()
	p.pause(blocked)
	if ctx.Err() == nil && closed(p.lease.lost) {
		return ErrLeaseLost
	}
	if !stopping && p.parking.retryWanted && len(p.window.flights) == 0 && p.writes.writing == nil {
		p.parking.retryWanted = false
		p.parking.retry.Reset(p.cfg.retryEvery())
		if p.expired() {
			return ErrLeaseLost
		}
		if err := p.retryParked(ctx); err != nil {
			return err
		}
		p.reads.readDue = true
		return nil
	}
	if !stopping && !p.parking.retryWanted && p.hasRoom() && (len(p.reads.ahead) > 0 || p.reads.readDue) {
		if p.expired() {
			return ErrLeaseLost // not renewed in time: another replica may lead now
		}
		if !p.paused && len(p.reads.ahead) > 0 {
			return p.publish(ctx)
		}
	}
	if !stopping && !p.paused && p.reads.readDue && p.reads.reading == nil && len(p.reads.ahead) < p.cfg.BatchSize && p.reads.aheadBytes < p.cfg.BatchBytes {
		p.startRead(ctx)
	}
	var read <-chan readResult
	if p.reads.reading != nil {
		read = p.reads.reading.done
	}
	var done <-chan struct{}
	if len(p.window.flights) > 0 {
		done = p.window.flights[0].conf.Done()
	}
	var wake, stop <-chan struct{}
	var tick, retry <-chan time.Time
	if !stopping {
		stop = ctx.Done()
		if !p.paused && len(p.parking.parked) > 0 { // nothing parked, nothing to retry
			retry = p.parking.retry.C
		}
		if !p.reads.readDue {
			wake = p.cfg.Wake
			tick = p.pollTimer()
		}
	}
	var lost <-chan struct{}
	if ctx.Err() == nil { // a hand-over still needs the lease
		lost = p.lease.lost
	}
	select {
	case <-lost:
		return ErrLeaseLost
	case <-p.lease.renew.C:
		return p.renewLease(finish)
	case err := <-p.writes.written:
		return p.wrote(err)
	case res := <-read:
		return p.readDone(ctx, res)
	case <-done:
		return p.record(finish)
	case <-finish.Done():
		if len(p.window.flights) == 0 {
			p.settle() // out of time, but the write is nearly done
			return nil
		}
		return p.record(finish) // reports the shutdown timeout
	case <-retry:
		p.parking.retryWanted = true
	case <-blockChange:
	case <-tick:
		p.reads.readDue = true
	case <-wake:
		p.reads.readDue = true
		p.reads.lastWake = time.Now()
	case <-stop:
	}
	return nil
}

// pause follows the broker's resource alarm. It is checked at every step,
// not only when there is room to publish: a broker that blocks stops
// reading and confirming, so the window may stay full until it unblocks.
func (p *pipeline) pause(blocked bool) {
	if blocked == p.paused {
		return
	}
	p.paused = blocked
	p.cfg.Observer.Blocked(blocked)
	if blocked {
		p.log.Warn("paused publishing: the broker is blocking publishers (resource alarm); nothing more is read meanwhile")
	} else {
		p.log.Info("resumed publishing: the broker unblocked")
	}
}

// blocked reports whether the broker blocks publishers now.
func (p *pipeline) blocked() bool {
	blocked, _ := p.pub.Blocked()
	return blocked
}

// reset discards everything in flight after a failure: publishing resumes
// from the recorded position, on a fresh channel. Rows held in discarded
// flights were not parked; they are read again.
func (p *pipeline) reset() {
	p.settle()
	p.pub.Reset()
	p.stopRead()
	p.window.flights, p.window.inFlight, p.window.inFlightBytes = nil, 0, 0
	p.reads.ahead, p.reads.aheadBytes = nil, 0
	p.window.cursor = p.recorded
	p.reads.readDue = true
	p.window.probe = true
	// What messages in doubt named is named again by the next ones.
	for agg, named := range p.parking.naming {
		p.parking.gaps[agg] = append(p.parking.gaps[agg], named...)
	}
	clear(p.parking.naming)
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
