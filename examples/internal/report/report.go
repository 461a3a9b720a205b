// Package report writes the summary an example prints at the end of a
// run, for a reader at a terminal: one line per figure with what it means,
// then a few examples of each problem found, so that a failed run shows
// where to look without flooding the screen.
package report

import (
	"fmt"
	"io"
	"strings"
)

// maxExamples is how many items of a list [Table.Examples] writes.
const maxExamples = 5

// Table writes the lines of a summary to W.
type Table struct {
	W         io.Writer
	NameWidth int // figures' names are padded to it, so that the values line up
}

// Line writes one figure: its name, its value n, and what it means,
// formatted from format and args as by fmt.Sprintf.
func (t Table) Line(name string, n any, format string, args ...any) {
	fmt.Fprintf(t.W, "  %-*s %6v  %s\n", t.NameWidth, name, n, fmt.Sprintf(format, args...))
}

// Examples writes the first items under the heading what, one a line, and
// how many more there are. It writes nothing when items is empty.
func (t Table) Examples(what string, items []string) {
	if len(items) == 0 {
		return
	}
	if len(items) > maxExamples {
		items = append(items[:maxExamples:maxExamples], fmt.Sprintf("... and %d more", len(items)-maxExamples))
	}
	fmt.Fprintf(t.W, "  %s:\n    %s\n", what, strings.Join(items, "\n    "))
}
