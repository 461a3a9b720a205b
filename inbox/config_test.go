package inbox

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	h := func(context.Context, pgx.Tx, Message) error { return nil }
	for _, c := range []struct {
		name  string
		cfg   Config
		field string // empty: valid
	}{
		{"minimal", Config{Consumer: "billing", Handler: h}, ""},
		{"qualified table", Config{Consumer: "billing", Handler: h, Table: "svc.Inbox_2"}, ""},
		{"no consumer", Config{Handler: h}, "Consumer"},
		{"no handler", Config{Consumer: "billing"}, "Handler"},
		{"negative attempts", Config{Consumer: "billing", Handler: h, MaxAttempts: -1}, "MaxAttempts"},
		{"three parts", Config{Consumer: "billing", Handler: h, Table: "a.b.c"}, "Table"},
		{"quote", Config{Consumer: "billing", Handler: h, Table: `inbox"; DROP TABLE x; --`}, "Table"},
		{"no room for the suffix", Config{Consumer: "billing", Handler: h, Table: strings.Repeat("i", 55)}, "Table"},
		{"long schema is fine", Config{Consumer: "billing", Handler: h, Table: strings.Repeat("s", 63) + ".inbox"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			switch {
			case c.field == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case c.field != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.field)):
				t.Errorf("Validate() = %v, want ErrInvalidConfig naming %s", err, c.field)
			}
		})
	}
}

func TestNewRefusesNilPool(t *testing.T) {
	t.Parallel()
	var pool *pgxpool.Pool
	_, err := New(pool, Config{Consumer: "billing", Handler: func(context.Context, pgx.Tx, Message) error { return nil }})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New(nil, ...) = %v, want ErrInvalidConfig", err)
	}
}

func TestParseTables(t *testing.T) {
	t.Parallel()
	for table, want := range map[string][2]string{
		"":            {`"inbox"`, `"inbox_attempts"`},
		"Consumed":    {`"Consumed"`, `"Consumed_attempts"`},
		"svc.inbox":   {`"svc"."inbox"`, `"svc"."inbox_attempts"`},
		"order.inbox": {`"order"."inbox"`, `"order"."inbox_attempts"`},
	} {
		in, attempts, err := parseTables(table)
		if err != nil || in != want[0] || attempts != want[1] {
			t.Errorf("parseTables(%q) = %s, %s, %v; want %s, %s", table, in, attempts, err, want[0], want[1])
		}
	}
}

func TestParseMessageID(t *testing.T) {
	t.Parallel()
	const canonical = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
	for _, s := range []string{
		canonical,
		"6F9619FF-8B86-D011-B42D-00C04FC964FF",
		"6f9619ff8b86d011b42d00c04fc964ff",
		"{6f9619ff-8b86-d011-b42d-00c04fc964ff}",
	} {
		if got, err := parseMessageID(s); err != nil || got != canonical {
			t.Errorf("parseMessageID(%q) = %q, %v; want %s", s, got, err, canonical)
		}
	}
	for _, s := range []string{
		"",
		"42",
		"order-42",
		"6f9619ff-8b86-d011-b42d-00c04fc964f",    // one digit short
		"6f9619ff-8b86-d011-b42d-00c04fc964fg",   // not hex
		"6f9619ff8-b86-d011-b42d-00c04fc964ff",   // hyphen misplaced
		"{6f9619ff-8b86-d011-b42d-00c04fc964ff",  // unbalanced brace
		" 6f9619ff-8b86-d011-b42d-00c04fc964ff ", // spaces
	} {
		if got, err := parseMessageID(s); !errors.Is(err, ErrMessageID) {
			t.Errorf("parseMessageID(%q) = %q, %v; want ErrMessageID", s, got, err)
		}
	}
}

func TestDefaultBackoff(t *testing.T) {
	t.Parallel()
	for attempt, want := range map[int]time.Duration{
		1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 3: time.Second,
		6: 8 * time.Second, 7: 10 * time.Second, 1000: 10 * time.Second,
	} {
		if got := defaultBackoff(attempt); got != want {
			t.Errorf("defaultBackoff(%d) = %v, want %v", attempt, got, want)
		}
	}
}
