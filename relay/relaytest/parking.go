package relaytest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// ParkedRow is a parked row as an operator sees it.
type ParkedRow struct {
	ID       int64
	Attempts int
	Reason   string
	Dead     bool
	Dropped  bool
	Reported bool // a later message of its aggregate named it
}

// Parked returns the parked rows, in publishing order.
func (s *Store) Parked() []ParkedRow {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ParkedRow, 0, len(s.parked))
	for _, e := range s.parked {
		out = append(out, ParkedRow{ID: e.row.ID, Attempts: e.attempts, Reason: e.reason, Dead: e.dead, Dropped: e.dropped, Reported: e.reported})
	}
	return out
}

// Drop does what an operator's drop does: the row is given up, and its
// aggregate goes on without it.
func (s *Store) Drop(id int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.find(id)
	if e == nil {
		return fmt.Errorf("row %d is not parked", id)
	}
	e.dropped = true
	s.changedLocked()
	return nil
}

func (s *Store) find(id int64) *entry {
	for _, e := range s.parked {
		if e.row.ID == id {
			return e
		}
	}
	return nil
}

// holding reports whether e holds its aggregate back under policy.
func holding(e *entry, policy relay.DeadRows) bool {
	return !e.dropped && !(e.dead && policy == relay.DeadRowsSkip)
}

// ParkedAggregates implements relay.Parking.
func (s *Store) ParkedAggregates(ctx context.Context, policy relay.DeadRows) ([]relay.Aggregate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing(ctx, "ParkedAggregates"); err != nil {
		return nil, err
	}
	var out []relay.Aggregate
	for _, e := range s.parked {
		if a := e.row.Aggregate(); holding(e, policy) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// Skipped implements relay.Parking.
func (s *Store) Skipped(ctx context.Context, policy relay.DeadRows) (map[relay.Aggregate][]relay.Skipped, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing(ctx, "Skipped"); err != nil {
		return nil, err
	}
	out := map[relay.Aggregate][]relay.Skipped{}
	for _, e := range s.parked {
		if !e.reported && !holding(e, policy) {
			a := e.row.Aggregate()
			out[a] = append(out[a], relay.Skipped{ID: e.row.ID, EventID: e.row.EventID})
		}
	}
	return out, nil
}

// RecordParked implements relay.Parking.
func (s *Store) RecordParked(ctx context.Context, pos relay.Position, park []relay.Parked, reported []int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, "Record"); err != nil {
		return err
	}
	for _, p := range park {
		if s.find(p.Row.ID) != nil {
			continue // parked already
		}
		s.parked = append(s.parked, &entry{row: p.Row, attempts: p.Attempts, reason: p.Reason, due: time.Now().Add(p.Retry), dead: p.Dead})
	}
	slices.SortFunc(s.parked, func(a, b *entry) int { return cmpPos(a.row.Position(), b.row.Position()) })
	s.report(reported)
	s.record(pos)
	s.changedLocked()
	return nil
}

func cmpPos(a, b relay.Position) int {
	switch {
	case a.After(b):
		return 1
	case b.After(a):
		return -1
	}
	return 0
}

func (s *Store) report(ids []int64) {
	for _, id := range ids {
		if e := s.find(id); e != nil {
			e.reported = true
		}
	}
}

// DueHeads implements relay.Parking.
func (s *Store) DueHeads(ctx context.Context, b relay.Batch, policy relay.DeadRows) ([]relay.ParkedRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing(ctx, "DueHeads"); err != nil {
		return nil, err
	}
	var out []relay.ParkedRow
	var seen []relay.Aggregate
	now := time.Now()
	for _, e := range s.parked {
		a := e.row.Aggregate()
		if !holding(e, policy) || slices.Contains(seen, a) {
			continue
		}
		seen = append(seen, a)
		if e.dead || e.due.After(now) || (b.Rows > 0 && len(out) == b.Rows) {
			continue
		}
		h := relay.ParkedRow{Row: bounded(e.row, b.MaxPayload), Attempts: e.attempts}
		for _, k := range s.parked {
			if k.row.Aggregate() == a && !k.reported && !holding(k, policy) {
				h.Skipped = append(h.Skipped, relay.Skipped{ID: k.row.ID, EventID: k.row.EventID})
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// Unpark implements relay.Parking.
func (s *Store) Unpark(ctx context.Context, row relay.Row, policy relay.DeadRows, reported []int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, "Unpark"); err != nil {
		return 0, err
	}
	if s.find(row.ID) == nil {
		s.problemf("unparked row %d, which is not parked", row.ID)
	}
	s.parked = slices.DeleteFunc(s.parked, func(e *entry) bool { return e.row.ID == row.ID })
	s.report(reported)
	s.changedLocked()
	return s.remaining(row.Aggregate(), policy), nil
}

// Failed implements relay.Parking.
func (s *Store) Failed(ctx context.Context, row relay.Row, attempts int, reason string, retry time.Duration, dead bool, policy relay.DeadRows) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, "Failed"); err != nil {
		return 0, err
	}
	e := s.find(row.ID)
	if e == nil {
		return 0, fmt.Errorf("row %d is not parked", row.ID)
	}
	e.attempts, e.reason, e.due, e.dead = attempts, reason, time.Now().Add(retry), dead
	s.changedLocked()
	return s.remaining(row.Aggregate(), policy), nil
}

func (s *Store) remaining(a relay.Aggregate, policy relay.DeadRows) int {
	n := 0
	for _, e := range s.parked {
		if e.row.Aggregate() == a && holding(e, policy) {
			n++
		}
	}
	return n
}
