// Package gcpercent holds the relay binary's garbage-collection target.
package gcpercent

import (
	"os"
	"runtime/debug"
	"strconv"
)

// Default is the relay binary's GOGC unless the environment sets one. The
// relay's live heap is small and bounded (a window of rows and what is
// read ahead) while it allocates for every message, so with Go's default
// of 100 it collects dozens of times a second. Letting the heap grow to
// five times the live data before collecting cut the relay's CPU per
// message by about a quarter in the benchmark suite, for 10 to 18 MB more
// resident memory with the default settings (see docs/performance.md).
const Default = 400

// Apply sets Default, unless GOGC is set, and returns the GOGC in effect.
func Apply() string {
	if v, ok := os.LookupEnv("GOGC"); ok {
		return v
	}
	debug.SetGCPercent(Default)
	return strconv.Itoa(Default)
}
