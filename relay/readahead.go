package relay

import (
	"context"
	"time"
)

// wakesTrusted is how recent a wake-up must be for the relay to wait for
// the next one instead of lingering: notifications come with every commit
// where a trigger sends them, and never where none does.
const wakesTrusted = time.Second

// reads is the reading ahead: rows read after the cursor and not yet
// published, and the read in progress.
type reads struct {
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
	from := p.window.cursor
	if n := len(p.reads.ahead); n > 0 {
		from = p.reads.ahead[n-1].Position()
	}
	ctx, cancel := context.WithCancel(ctx)
	b := p.cfg.batch()
	if p.reads.readRows > 0 {
		b.Rows = p.reads.readRows
	}
	rd := &read{done: make(chan readResult, 1), cancel: cancel, asked: b.Rows}
	p.reads.reading = rd
	go func() {
		rows, err := p.store.Read(ctx, from, b)
		rd.done <- readResult{rows, err}
	}()
}

// readDone takes a finished read's rows and decides when to read next: at
// once after a full batch, after MinPoll after a partial one or an empty
// one within Linger of the last rows, and with growing waits while the
// outbox stays empty longer.
func (p *pipeline) readDone(ctx context.Context, res readResult) error {
	cfg := p.cfg
	asked := p.reads.reading.asked
	p.reads.reading.cancel()
	p.reads.reading = nil
	if res.err != nil {
		if ctx.Err() != nil {
			return nil // stopping; nothing new is in flight
		}
		return errorf(ctx, "read outbox: %w", storeError{res.err})
	}
	if len(p.reads.ahead) == 0 {
		p.reads.ahead = res.rows
	} else {
		p.reads.ahead = append(p.reads.ahead, res.rows...)
	}
	bytes := sizeOf(res.rows)
	p.reads.aheadBytes += bytes
	if n := len(res.rows); n > 0 {
		// Ask next time for as many rows as BatchBytes holds at the size
		// of these: rows past it would be received only to be dropped.
		p.reads.readRows = min(max(cfg.BatchBytes/(bytes/n), 1), cfg.BatchSize)
	}
	now := time.Now()
	if len(res.rows) > 0 {
		p.reads.lastRows = now
	}
	switch {
	case len(res.rows) == asked || 2*bytes >= cfg.BatchBytes:
		p.reads.idle = cfg.MinPoll // more are likely waiting: read again now
	case len(res.rows) > 0:
		p.reads.readDue, p.reads.idle = false, cfg.MinPoll
		p.armPoll(cfg.MinPoll)
	case now.Sub(p.reads.lastRows) < cfg.Linger && now.Sub(p.reads.lastWake) > wakesTrusted:
		// Traffic paused for a moment: keep looking closely, unless
		// wake-ups come (a NOTIFY trigger), which say when to look.
		p.reads.readDue = false
		p.armPoll(cfg.MinPoll)
	default:
		p.reads.readDue = false
		p.armPoll(p.reads.idle)
		p.reads.idle = min(p.reads.idle*2, cfg.PollInterval)
		if !p.publishing() && len(p.reads.ahead) == 0 {
			// Idle: make sure the broker is there for the next row.
			if err := p.pub.Connect(ctx); err != nil && ctx.Err() == nil {
				return errorf(ctx, "connect to the broker: %w", err)
			}
		}
	}
	return nil
}

// stopRead abandons the read in progress, if any, and waits for it to end.
func (p *pipeline) stopRead() {
	if p.reads.reading != nil {
		p.reads.reading.cancel()
		<-p.reads.reading.done
		p.reads.reading = nil
	}
}

func (p *pipeline) armPoll(d time.Duration) {
	if p.reads.timer == nil {
		p.reads.timer = time.NewTimer(d)
		return
	}
	p.reads.timer.Reset(d)
}

func (p *pipeline) pollTimer() <-chan time.Time {
	if p.reads.timer == nil {
		return nil
	}
	return p.reads.timer.C
}
