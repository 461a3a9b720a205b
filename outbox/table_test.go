package outbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestNewWriterRefusesBadTableNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{
		"outbox; drop table x",
		"outbox;--",
		"a.b.c",
		`"outbox"`,
		`out"box`,
		"o'box",
		"out box",
		"outbox\x00",
		"1outbox",
		"public.",
		".outbox",
		".",
		"out-box",
		"outböx",
		"public.outbox(id)",
		strings.Repeat("a", 64),
		"public." + strings.Repeat("a", 64),
	} {
		w, err := outbox.NewWriter(name)
		if !errors.Is(err, outbox.ErrInvalidTable) || w != nil {
			t.Errorf("NewWriter(%q) = %v, %v; want ErrInvalidTable", name, w, err)
		}
	}
	for _, name := range []string{"", "outbox", "public.outbox", "_o", "Outbox_2", strings.Repeat("a", 63)} {
		if _, err := outbox.NewWriter(name); err != nil {
			t.Errorf("NewWriter(%q): %v", name, err)
		}
	}
}

func TestNewWriterTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	// The schema in its own schema, renamed to a reserved word with a
	// capital letter: only exact quoting reaches it.
	setupSQL := `CREATE SCHEMA app; SET search_path = app;` + outboxrelay.Schema +
		`; ALTER TABLE app.outbox RENAME TO "Order"; RESET search_path;`
	if _, err := b.conn.Exec(ctx, setupSQL); err != nil {
		t.Fatal(err)
	}

	t.Run("schema-qualified", func(t *testing.T) {
		w, err := outbox.NewWriter("app.Order")
		if err != nil {
			t.Fatal(err)
		}
		events := sampleEvents()
		if err := w.Write(ctx, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		checkStored(t, readRows(t, b.conn, `app."Order"`), events)
		if rows := readRows(t, b.conn, "public.outbox"); len(rows) != 0 {
			t.Errorf("public.outbox has %d rows, want none", len(rows))
		}
	})

	t.Run("names are case-sensitive", func(t *testing.T) {
		w, err := outbox.NewWriter("app.order")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(ctx, b.conn, sampleEvents()...); err == nil || !strings.Contains(err.Error(), `"app.order" does not exist`) {
			t.Errorf("write to app.order: %v, want relation does not exist", err)
		}
	})
}
