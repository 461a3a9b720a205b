package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// throttle is a slog.Handler that lets each warning or error through at
// most once per interval, so an outage that makes the relay retry every few
// seconds logs a line now and then instead of flooding the log. The line
// that ends a quiet period says how many were suppressed. Info and debug
// lines (state changes) always pass.
//
// Two warnings are the same when their messages are and so are the rows
// they name (the attributes in rowAttrs), whatever their other attributes
// say: seven rows dying are seven lines, and one row failing again and
// again, with a different reason each time, is one.
type throttle struct {
	next  slog.Handler
	every time.Duration
	attrs []slog.Attr // of rowAttrs, given to WithAttrs
	state *throttleState
}

// rowAttrs are the attributes that name a row.
var rowAttrs = []string{"id", "aggregate_type", "aggregate_id"}

// maxThrottled bounds the remembered warnings. Past it, those older than
// the interval are forgotten (the next would pass anyway, though without
// its count of suppressed ones), and if that is not enough, new rows'
// warnings fold by message alone, one more entry per message at most.
const maxThrottled = 4096

type throttleState struct {
	mu    sync.Mutex
	seen  map[string]*throttled // by message and row
	swept time.Time             // when seen was last rid of old entries
}

type throttled struct {
	last       time.Time
	suppressed int
}

func newThrottle(next slog.Handler, every time.Duration) *throttle {
	return &throttle{next: next, every: every, state: &throttleState{seen: map[string]*throttled{}}}
}

func (h *throttle) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *throttle) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	s := h.state
	s.mu.Lock()
	t := s.lookup(h.key(r), r.Message, r.Time, h.every)
	if !t.last.IsZero() && r.Time.Sub(t.last) < h.every {
		t.suppressed++
		s.mu.Unlock()
		return nil
	}
	suppressed := t.suppressed
	t.last, t.suppressed = r.Time, 0
	s.mu.Unlock()
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

// key is the record's message and the row it names, if any.
func (h *throttle) key(r slog.Record) string {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		for _, k := range rowAttrs {
			if a.Key == k {
				b.WriteString("\x00" + k + "=" + a.Value.Resolve().String())
			}
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	return b.String()
}

// lookup returns the entry for key, making one if there is room, or else
// the one for msg alone. s.mu is held.
func (s *throttleState) lookup(key, msg string, now time.Time, every time.Duration) *throttled {
	if t := s.seen[key]; t != nil {
		return t
	}
	if len(s.seen) >= maxThrottled && now.Sub(s.swept) >= every {
		s.swept = now
		for k, t := range s.seen {
			if now.Sub(t.last) >= every {
				delete(s.seen, k)
			}
		}
	}
	if len(s.seen) >= maxThrottled {
		if t := s.seen[msg]; t != nil {
			return t
		}
		key = msg
	}
	t := &throttled{}
	s.seen[key] = t
	return t
}

func (h *throttle) WithAttrs(attrs []slog.Attr) slog.Handler {
	mine := h.attrs[:len(h.attrs):len(h.attrs)]
	for _, a := range attrs {
		for _, k := range rowAttrs {
			if a.Key == k {
				mine = append(mine, a)
			}
		}
	}
	return &throttle{next: h.next.WithAttrs(attrs), every: h.every, attrs: mine, state: h.state}
}

func (h *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: h.next.WithGroup(name), every: h.every, attrs: h.attrs, state: h.state}
}
