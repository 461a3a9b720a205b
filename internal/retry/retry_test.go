package retry

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestBackoffGrowsWithinItsBounds(t *testing.T) {
	b := Backoff{Min: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n := range 40 {
		ceil := Ceiling(b.Min, b.Max, n)
		d := b.Next()
		if d < b.Min || d > ceil {
			t.Fatalf("wait %d is %s, want within [%s, %s]", n, d, b.Min, ceil)
		}
	}
	b.Reset()
	if d := b.Next(); d != b.Min {
		t.Errorf("first wait after Reset is %s, want Min, %s", d, b.Min)
	}
}

func TestCeiling(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{-1, time.Second}, {0, time.Second}, {1, 2 * time.Second}, {3, 8 * time.Second}, {4, 10 * time.Second}, {62, 10 * time.Second}} {
		if got := Ceiling(time.Second, 10*time.Second, tc.n); got != tc.want {
			t.Errorf("Ceiling(1s, 10s, %d) = %s, want %s", tc.n, got, tc.want)
		}
	}
}

func TestStreakReportsItsStartChangesAndEnd(t *testing.T) {
	var s Streak
	down, refused := errors.New("connection refused"), errors.New("password authentication failed")
	var logged []bool
	for _, err := range []error{down, down, down, refused, refused} {
		logged = append(logged, s.Fail(err))
	}
	if want := []bool{true, false, false, true, false}; !slices.Equal(logged, want) {
		t.Errorf("Fail reported %v, want %v (the first, and the change)", logged, want)
	}
	if !s.Failing() {
		t.Error("not failing after failures")
	}
	if n := s.Succeed(); n != 5 {
		t.Errorf("Succeed counted %d failures, want 5", n)
	}
	if n := s.Succeed(); n != 0 || s.Failing() {
		t.Errorf("a second success counted %d failures (failing %v), want none", n, s.Failing())
	}
	if !s.Fail(down) {
		t.Error("the first failure of a new streak was not reported")
	}
}
