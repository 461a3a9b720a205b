package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// throttle is a slog.Handler that lets each distinct warning or error
// message through at most once per interval, so an outage that makes the
// relay retry every few seconds logs a line now and then instead of
// flooding the log. The line that ends a quiet period says how many were
// suppressed. Info and debug lines (state changes) always pass.
type throttle struct {
	next  slog.Handler
	every time.Duration
	state *throttleState
}

type throttleState struct {
	mu   sync.Mutex
	seen map[string]*throttled // by message
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
	t := s.seen[r.Message]
	if t == nil {
		t = &throttled{}
		s.seen[r.Message] = t
	}
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

func (h *throttle) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &throttle{next: h.next.WithAttrs(attrs), every: h.every, state: h.state}
}

func (h *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: h.next.WithGroup(name), every: h.every, state: h.state}
}
