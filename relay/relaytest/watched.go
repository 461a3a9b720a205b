package relaytest

import (
	"fmt"
	"slices"
	"sync"
)

// watched is what each fake keeps for the test that drives it: its lock, a
// signal at every change, so a test waits on the fake's state instead of
// sleeping, and the contract violations it saw.
type watched struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced at every change
	problems []string
}

func newWatched() watched { return watched{changed: make(chan struct{})} }

// Changed returns a channel closed at the fake's next change.
func (w *watched) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Problems returns the contract violations seen so far.
func (w *watched) Problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.problems)
}

// changedLocked signals a change; the caller holds mu.
func (w *watched) changedLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// problemf records a violation; the caller holds mu.
func (w *watched) problemf(format string, args ...any) {
	w.problems = append(w.problems, fmt.Sprintf(format, args...))
}
