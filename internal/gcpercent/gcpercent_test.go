package gcpercent

import (
	"os"
	"runtime/debug"
	"testing"
)

// TestApply: without GOGC the relay's default is set; with GOGC the
// environment's choice stands.
func TestApply(t *testing.T) {
	was, set := os.LookupEnv("GOGC")
	before := debug.SetGCPercent(100)
	t.Cleanup(func() {
		debug.SetGCPercent(before)
		if set {
			os.Setenv("GOGC", was)
		} else {
			os.Unsetenv("GOGC")
		}
	})

	os.Unsetenv("GOGC")
	if got := Apply(); got != "400" {
		t.Fatalf("Apply() = %q without GOGC, want 400", got)
	}
	if p := debug.SetGCPercent(100); p != Default {
		t.Fatalf("GC percent %d without GOGC, want %d", p, Default)
	}

	os.Setenv("GOGC", "150")
	if got := Apply(); got != "150" {
		t.Fatalf("Apply() = %q with GOGC=150, want 150", got)
	}
	if p := debug.SetGCPercent(100); p != 100 {
		t.Fatalf("GC percent %d with GOGC set, want it left alone (100)", p)
	}
}
