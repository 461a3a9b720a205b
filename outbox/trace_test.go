package outbox_test

import (
	"context"
	"maps"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

const (
	testParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testState  = `vendor=opaque,other=a"b\c`
)

func TestTraceContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("the context helper adds traceparent and tracestate to every event", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		events := sampleEvents()
		before := maps.Clone(events[1].Headers)
		traced := outbox.ContextWithTraceParent(ctx, testParent, testState)
		if err := outbox.Write(traced, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(events[1].Headers, before) {
			t.Errorf("Write changed the caller's Headers to %v", events[1].Headers)
		}
		trace := map[string]any{"traceparent": testParent, "tracestate": testState}
		checkHeaders(t, readRows(t, b.conn, "outbox"), withTrace(events, trace))
	})

	t.Run("database/sql writes carry it too, an empty tracestate is left out", func(t *testing.T) {
		t.Parallel()
		url := testenv.Database(t)
		var w outbox.Writer
		traced := outbox.ContextWithTraceParent(ctx, testParent, "")
		if err := w.WriteSQL(traced, sqlDB(t, url, pgx.QueryExecModeCacheStatement), sampleEvents()...); err != nil {
			t.Fatal(err)
		}
		checkHeaders(t, readRows(t, connect(t, url, nil), "outbox"),
			withTrace(sampleEvents(), map[string]any{"traceparent": testParent}))
	})

	t.Run("the hook is asked once per write, and the context helper, even empty, wins over it", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		const hookParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
		calls := 0
		w := outbox.Writer{TraceContext: func(context.Context) (string, string) {
			calls++
			return hookParent, "hook=1"
		}}
		hooked := numbered("hook", 3)
		if err := w.Write(ctx, b.conn, hooked...); err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Errorf("hook called %d times for one write, want 1", calls)
		}
		helped := numbered("helper", 2)
		if err := w.Write(outbox.ContextWithTraceParent(ctx, testParent, testState), b.conn, helped...); err != nil {
			t.Fatal(err)
		}
		untraced := numbered("off", 1)
		if err := w.Write(outbox.ContextWithTraceParent(ctx, "", ""), b.conn, untraced...); err != nil {
			t.Fatal(err)
		}
		if err := w.Write(ctx, b.conn); err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Errorf("hook called %d times in all, want 1: not when the context has a trace context, nor for no events", calls)
		}
		want := append(withTrace(hooked, map[string]any{"traceparent": hookParent, "tracestate": "hook=1"}),
			withTrace(helped, map[string]any{"traceparent": testParent, "tracestate": testState})...)
		want = append(want, untraced...)
		checkHeaders(t, readRows(t, b.conn, "outbox"), want)
	})

	t.Run("explicit headers win over the trace context", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		events := numbered("explicit", 3)
		events[0].Headers = map[string]any{"traceparent": "my own, not even valid"}
		events[1].Headers = map[string]any{"tracestate": "mine=1", "tenant": "acme"}
		events[2].Headers = map[string]any{"tenant": "acme"}
		traced := outbox.ContextWithTraceParent(ctx, testParent, testState)
		if err := outbox.Write(traced, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		want := append(events[:2:2], withTrace(events[2:], map[string]any{"traceparent": testParent, "tracestate": testState})...)
		checkHeaders(t, readRows(t, b.conn, "outbox"), want)
	})

	t.Run("a malformed trace context is left out and fails nothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		invalid := map[string]string{
			"empty":                                  "",
			"uppercase hex":                          "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
			"zero trace-id":                          "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
			"zero parent-id":                         "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
			"version ff":                             "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"short":                                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
			"version 00 too long":                    testParent + "-00",
			"later version, no dash after the flags": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
			"wrong separator":                        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"not hex":                                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
			"NUL byte":                               "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\x00",
		}
		for name, parent := range invalid {
			e := numbered(name, 1)
			w := outbox.Writer{TraceContext: func(context.Context) (string, string) { return parent, "vendor=1" }}
			if err := w.Write(ctx, b.conn, e...); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if err := outbox.Write(outbox.ContextWithTraceParent(ctx, parent, "vendor=1"), b.conn, e...); err != nil {
				t.Fatalf("%s through the context helper: %v", name, err)
			}
		}
		for _, r := range readRows(t, b.conn, "outbox") {
			if r.Headers != "{}" {
				t.Errorf("%s: headers %s, want {}", r.AggregateID, r.Headers)
			}
		}
	})

	t.Run("valid variants are kept as they are, a malformed tracestate alone is dropped", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		cases := []struct{ parent, state, wantState string }{
			{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "a=1", "a=1"},
			{"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", "", ""},
			{"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future-fields", "a=1", "a=1"},
			{testParent, "a=é", ""},
			{testParent, "a=1\n", ""},
		}
		var want []outbox.Event
		for i, c := range cases {
			e := numbered(string(rune('a'+i)), 1)
			if err := outbox.Write(outbox.ContextWithTraceParent(ctx, c.parent, c.state), b.conn, e...); err != nil {
				t.Fatal(err)
			}
			trace := map[string]any{"traceparent": c.parent}
			if c.wantState != "" {
				trace["tracestate"] = c.wantState
			}
			want = append(want, withTrace(e, trace)...)
		}
		checkHeaders(t, readRows(t, b.conn, "outbox"), want)
	})

	t.Run("without a trace context headers are unchanged", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		events := sampleEvents()
		w := outbox.Writer{TraceContext: func(context.Context) (string, string) { return "", "" }}
		if err := w.Write(ctx, b.conn, events...); err != nil {
			t.Fatal(err)
		}
		checkStored(t, readRows(t, b.conn, "outbox"), events)
	})

	t.Run("a traced write is still one statement in one round trip", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		traced := outbox.ContextWithTraceParent(ctx, testParent, testState)
		if err := outbox.Write(traced, b.conn, numbered("warm-up", 1)...); err != nil {
			t.Fatal(err)
		}
		b.tracer.take()
		trips := b.wire.roundTrips()
		if err := outbox.Write(traced, b.conn, numbered("many", 100)...); err != nil {
			t.Fatal(err)
		}
		if got := b.wire.roundTrips() - trips; got != 1 {
			t.Errorf("%d round trips, want 1", got)
		}
		if q := b.tracer.take(); len(q) != 1 {
			t.Errorf("queries %q, want one", q)
		}
	})

	t.Run("an invalid event fails as before, without asking the hook", func(t *testing.T) {
		t.Parallel()
		asked := false
		w := outbox.Writer{TraceContext: func(context.Context) (string, string) { asked = true; return testParent, "" }}
		e := numbered("bad", 1)
		e[0].RoutingKey = ""
		if err := w.Write(ctx, nil, e...); err == nil || asked {
			t.Errorf("error %v, hook asked %v: want a validation error and no call", err, asked)
		}
	})
}

// withTrace returns copies of events whose headers also hold trace.
func withTrace(events []outbox.Event, trace map[string]any) []outbox.Event {
	out := make([]outbox.Event, len(events))
	for i, e := range events {
		e.Headers = maps.Clone(e.Headers)
		if e.Headers == nil {
			e.Headers = map[string]any{}
		}
		maps.Copy(e.Headers, trace)
		out[i] = e
	}
	return out
}

// checkHeaders fails the test unless the rows' headers are exactly those of
// events, in order.
func checkHeaders(t *testing.T, rows []storedRow, events []outbox.Event) {
	t.Helper()
	if len(rows) != len(events) {
		t.Fatalf("got %d rows, want %d", len(rows), len(events))
	}
	for i, r := range rows {
		if got, want := decodeJSON(t, r.Headers), normalize(t, events[i].Headers); !equalJSON(got, want) {
			t.Errorf("row %d (%s %s): headers = %s, want %v", i, r.AggregateID, r.EventType, r.Headers, want)
		}
	}
}

// BenchmarkWrite100Traced is BenchmarkWrite100 with a trace context to add
// to every event.
func BenchmarkWrite100Traced(b *testing.B) {
	ctx := outbox.ContextWithTraceParent(context.Background(), testParent, testState)
	conn := connect(b, testenv.Database(b), nil)
	events := numbered("bench", 100)
	for i := range events {
		events[i].Headers = map[string]any{"tenant": "acme", "attempt": 1}
	}
	for b.Loop() {
		tx, err := conn.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := outbox.Write(ctx, tx, events...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "events/s")
}
