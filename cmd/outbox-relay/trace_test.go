package main

import (
	"context"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// TestTraceContextReachesTheConsumer writes events with the outbox library,
// in a trace and out of one, and checks that the relay delivers the
// writer's traceparent and tracestate as AMQP headers, byte for byte, and
// adds nothing to the untraced event.
func TestTraceContextReachesTheConsumer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testenv.Database(t)
	broker := testenv.NewBroker(t)
	queue := broker.DeclareQueue(t, "amq.direct", "traced")
	pool := newPool(t, dbURL)

	const (
		hookParent   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		hookState    = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
		helperParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
	)
	event := func(id string) outbox.Event {
		return outbox.Event{AggregateType: "order", AggregateID: id, EventType: "Traced",
			Exchange: "amq.direct", RoutingKey: "traced", Payload: []byte(`{}`)}
	}
	// A Writer with a hook, as OpenTelemetry would be wired.
	w := outbox.Writer{TraceContext: func(context.Context) (string, string) { return hookParent, hookState }}
	if err := w.Write(ctx, pool, event("hook")); err != nil {
		t.Fatal(err)
	}
	// The package's Write with the dependency-free context helper.
	helped := event("helper")
	helped.Headers = map[string]any{"tenant": "acme"}
	if err := outbox.Write(outbox.ContextWithTraceParent(ctx, helperParent, ""), pool, helped); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Write(ctx, pool, event("untraced")); err != nil {
		t.Fatal(err)
	}

	p := start(t, []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + broker.URL, "RELAY_POLL_INTERVAL=20ms"})
	defer stopClean(t, p)

	ch, err := broker.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{} // aggregate id -> headers
	for len(got) < 3 {
		select {
		case d := <-deliveries:
			id, _ := d.Headers["aggregate_id"].(string)
			got[id] = d.Headers
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of 3 messages arrived", len(got))
		}
	}

	want := map[string]map[string]any{
		"hook":     {"traceparent": hookParent, "tracestate": hookState},
		"helper":   {"traceparent": helperParent, "tenant": "acme"},
		"untraced": {},
	}
	for id, headers := range want {
		for _, name := range []string{"traceparent", "tracestate", "tenant"} {
			wantValue, wanted := headers[name]
			gotValue, present := got[id][name]
			switch {
			case wanted && gotValue != wantValue:
				// The comparison also checks the type: a string header.
				t.Errorf("%s: header %s = %#v, want %q", id, name, gotValue, wantValue)
			case !wanted && present:
				t.Errorf("%s: header %s = %#v, want none", id, name, gotValue)
			}
		}
	}
}
