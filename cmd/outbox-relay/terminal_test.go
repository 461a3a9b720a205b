package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

func TestTerminalEscaping(t *testing.T) {
	t.Parallel()
	const attack = "\x1b[2J\x1b]0;pwned\x07"
	for _, c := range []struct{ in, field, text string }{
		{"order-42", "order-42", "order-42"},
		{"", `""`, ""},
		{"Zahlung eingegangen", `"Zahlung eingegangen"`, "Zahlung eingegangen"},
		{"größe", "größe", "größe"},
		{attack, `"\x1b[2J\x1b]0;pwned\a"`, `\x1b[2J\x1b]0;pwned\a`},
		{"a\nb\rc\td", `"a\nb\rc\td"`, `a\nb\rc\td`},
		{"\u009b2J", `"\u009b2J"`, `\u009b2J`}, // the 8-bit CSI, as UTF-8
		{"left\u202eright", `"left\u202eright"`, `left\u202eright`},
		{"bad \xff byte", `"bad \xff byte"`, `bad \xff byte`},
		{`say "hi" \ bye`, `"say \"hi\" \\ bye"`, `say "hi" \ bye`},
	} {
		if got := termField(c.in); got != c.field {
			t.Errorf("termField(%q) = %s, want %s", c.in, got, c.field)
		}
		if got := termText(c.in); got != c.text {
			t.Errorf("termText(%q) = %s, want %s", c.in, got, c.text)
		}
		for _, out := range []string{termField(c.in), termText(c.in)} {
			if i := strings.IndexFunc(out, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }); i >= 0 {
				t.Errorf("escaping %q leaves %q in %q", c.in, out[i:], out)
			}
		}
	}
}

// TestWritersTextIsEscaped: text that writers control reaches the
// operator's terminal escaped in dead list, dead retry --dry-run and replay
// --dry-run, and escaped by encoding/json in dead list --json.
func TestWritersTextIsEscaped(t *testing.T) {
	t.Parallel()
	const attack = "\x1b[2J\x1b]0;pwned\x07" // clears the screen, sets the window title
	dbURL := testenv.Database(t)
	broker := testenv.NewBroker(t)
	queue := broker.DeclareQueue(t, "", "events")
	pool := newPool(t, dbURL)
	ch, err := broker.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	// The attack in every field the outputs show: a row that is published,
	// then one routed nowhere, which dies.
	if _, err := pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ($1, $1, $1, NULL, 'events', '{}'), ($1, $1, $1, 'amq.direct', $1, '{}')`, attack); err != nil {
		t.Fatal(err)
	}
	env := []string{"RELAY_DATABASE_URL=" + dbURL}
	p := start(t, append(env, "RELAY_AMQP_URL="+broker.URL, "RELAY_MAX_ATTEMPTS=1"))
	defer stopClean(t, p)
	take(t, ch, queue, 1)

	raw := func(args []string, out string) {
		t.Helper()
		if i := strings.IndexAny(out, "\x1b\x07"); i >= 0 {
			t.Errorf("%v prints a raw %q:\n%q", args, out[i], out)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		args := []string{"dead", "list", "--json"}
		code, out := runCmd(t, env, args...)
		var rows []struct {
			AggregateID string `json:"aggregate_id"`
			RoutingKey  string `json:"routing_key"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &rows) == nil && len(rows) == 1 {
			raw(args, out)
			if rows[0].AggregateID != attack || rows[0].RoutingKey != attack {
				t.Errorf("dead list --json decodes to %+v, want the text as written", rows[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead list --json: exit %d, %s; want 1 dead row", code, out)
		}
	}
	settledPosition(t, env) // replay lists only rows below it
	escaped := termField(attack)
	for _, args := range [][]string{{"dead", "list"}, {"dead", "retry", "--dry-run", "--all"}, {"replay", "--all", "--dry-run"}} {
		code, out := runCmd(t, env, args...)
		if code != 0 || strings.Count(out, escaped) < 2 {
			t.Errorf("%v: exit %d, want 0 and the fields escaped (%s):\n%s", args, code, escaped, out)
		}
		raw(args, out)
	}
}
