package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Text that writers control (aggregate ids, event types, routing keys, and
// the reasons that quote them) ends up in the human-readable output of the
// operator commands, which is read on a terminal. Written raw, an escape
// sequence in it can clear the screen, set the window title or rewrite the
// lines around it; so it is escaped as the logs escape it, with
// strconv.Quote's escapes. The --json outputs need none of this:
// encoding/json escapes control characters itself.

// termField returns s for a field among others on a line: as it is when it
// is made of printable characters other than spaces, quotes and
// backslashes, and otherwise quoted as strconv.Quote does, so that neither
// a control character nor a space can change what the line seems to say.
func termField(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == utf8.RuneError || r == ' ' || r == '"' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// termText returns free text (a reason, on a line of its own) with each
// character that is not printable and each byte that is not UTF-8 escaped
// as strconv.Quote escapes it, and nothing else changed. Backslashes stay
// as they are: reasons often quote a routing key or a header already (with
// %q), and doubling theirs would make them harder to read, not safer.
func termText(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}
