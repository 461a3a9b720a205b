package outbox_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestValidation(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 256)
	tests := []struct {
		name   string
		change func(e *outbox.Event)
		field  string
	}{
		{"empty aggregate type", func(e *outbox.Event) { e.AggregateType = "" }, "AggregateType"},
		{"empty aggregate id", func(e *outbox.Event) { e.AggregateID = "" }, "AggregateID"},
		{"empty event type", func(e *outbox.Event) { e.EventType = "" }, "EventType"},
		{"empty routing key", func(e *outbox.Event) { e.RoutingKey = "" }, "RoutingKey"},
		{"routing key over 255 bytes", func(e *outbox.Event) { e.RoutingKey = long }, "RoutingKey"},
		{"exchange over 255 bytes", func(e *outbox.Event) { e.Exchange = long }, "Exchange"},
		{"event type over 255 bytes", func(e *outbox.Event) { e.EventType = long }, "EventType"},
		{"content type over 255 bytes", func(e *outbox.Event) { e.ContentType = long }, "ContentType"},
		{"aggregate id with a NUL byte", func(e *outbox.Event) { e.AggregateID = "a\x00b" }, "AggregateID"},
		{"aggregate type not UTF-8", func(e *outbox.Event) { e.AggregateType = "\xff" }, "AggregateType"},
		{"event id not a UUID", func(e *outbox.Event) { e.EventID = "not-a-uuid" }, "EventID"},
		{"event id without hyphens", func(e *outbox.Event) { e.EventID = "6f9619ff8b86d011b42d00c04fc964ff" }, "EventID"},
		{"event id with a bad digit", func(e *outbox.Event) { e.EventID = "6f9619ff-8b86-d011-b42d-00c04fc964fg" }, "EventID"},
		{"empty header name", func(e *outbox.Event) { e.Headers = map[string]any{"": "x"} }, "Headers"},
		{"header name over 255 bytes", func(e *outbox.Event) { e.Headers = map[string]any{long: "x"} }, `Headers["` + long + `"]`},
		{"reserved header", func(e *outbox.Event) { e.Headers = map[string]any{"outbox_id": 1} }, `Headers["outbox_id"]`},
		{"nil header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": nil} }, `Headers["k"]`},
		{"object header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": map[string]any{}} }, `Headers["k"]`},
		{"slice header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": []string{"a"}} }, `Headers["k"]`},
		{"pointer header value", func(e *outbox.Event) { s := "a"; e.Headers = map[string]any{"k": &s} }, `Headers["k"]`},
		{"bytes header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": []byte("a")} }, `Headers["k"]`},
		{"NaN header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": math.NaN()} }, `Headers["k"]`},
		{"infinite header value", func(e *outbox.Event) { e.Headers = map[string]any{"k": math.Inf(1)} }, `Headers["k"]`},
		{"header string with a NUL byte", func(e *outbox.Event) { e.Headers = map[string]any{"k": "\x00"} }, `Headers["k"]`},
		{"first of several bad headers", func(e *outbox.Event) { e.Headers = map[string]any{"b": nil, "a": nil} }, `Headers["a"]`},
		{"headers larger than a frame", func(e *outbox.Event) { e.Headers = map[string]any{"big": strings.Repeat("v", 131072)} }, "Headers"},
		{"aggregate id larger than a frame", func(e *outbox.Event) { e.Headers = nil; e.AggregateID = strings.Repeat("a", 131072) }, "AggregateID"},
	}
	b := setup(t) // one database: every case must leave it untouched
	ctx := context.Background()
	w, err := outbox.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := numbered("valid", 3)
			tt.change(&events[1])
			for _, write := range []func() error{
				func() error { return w.Write(ctx, b.conn, events...) },
				func() error { return w.WriteSQL(ctx, nil, events...) }, // a nil db proves nothing is sent
			} {
				err := write()
				if !errors.Is(err, outbox.ErrInvalidEvent) {
					t.Fatalf("err = %v, want ErrInvalidEvent", err)
				}
				var verr *outbox.ValidationError
				if !errors.As(err, &verr) {
					t.Fatalf("err = %T, want *ValidationError", err)
				}
				if verr.Index != 1 || verr.Field != tt.field {
					t.Errorf("event %d field %s, want event 1 field %s (%v)", verr.Index, verr.Field, tt.field, err)
				}
				if !strings.Contains(err.Error(), "event 1") || !strings.Contains(err.Error(), tt.field) {
					t.Errorf("message %q does not name event 1 and field %s", err, tt.field)
				}
			}
			if q := b.tracer.take(); len(q) != 0 {
				t.Errorf("queries %q sent for an invalid event, want none", q)
			}
		})
	}
	t.Run("table is still empty", func(t *testing.T) {
		if rows := readRows(t, b.conn, "outbox"); len(rows) != 0 {
			t.Errorf("%d rows, want none", len(rows))
		}
	})
}

func TestValidationAccepts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := numbered("edge", 1)[0]
	e.RoutingKey = strings.Repeat("r", 255)
	e.Exchange = strings.Repeat("x", 255)
	e.AggregateID = strings.Repeat("é", 1000) // no limit: becomes a header value
	e.EventID = "00000000-0000-0000-0000-000000000000"
	e.Headers = map[string]any{strings.Repeat("h", 255): "v", "unicode ✓": "✓"}
	if err := outbox.Write(context.Background(), b.conn, e); err != nil {
		t.Fatal(err)
	}
	checkStored(t, readRows(t, b.conn, "outbox"), []outbox.Event{e})
}
