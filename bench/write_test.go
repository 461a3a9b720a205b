package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// eventsPerWrite is how many events one outbox.Write call carries in
// measurement 9.
const eventsPerWrite = 100

// measureWrite: measurement 9, the writer library. Transactions of one
// outbox.Write of 100 events each, on one connection, for a few seconds:
// events per second, and how many statements each Write sends, counted by
// a pgx tracer on the connection. It must be one.
func measureWrite(t *testing.T, s *suite) {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	var tracer queryCounter
	cfg.Tracer = &tracer
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	events := make([]outbox.Event, eventsPerWrite)
	for i := range events {
		events[i] = outbox.Event{AggregateType: "order", AggregateID: strconv.Itoa(i % 10), EventType: "OrderLineAdded",
			RoutingKey: queueName, Payload: payload, Headers: map[string]any{"tenant": "acme"}}
	}
	write := func() int64 {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before := tracer.n.Load()
		if err := outbox.Write(ctx, tx, events...); err != nil {
			t.Fatal(err)
		}
		sent := tracer.n.Load() - before
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return sent
	}
	check := func(sent int64) {
		if sent != 1 {
			t.Fatalf("outbox.Write of %d events sent %d statements, want 1", eventsPerWrite, sent)
		}
	}
	// The first call also prepares the statement (once per connection),
	// so it stays out of the timing.
	check(write())
	calls := 1
	begin := time.Now()
	for time.Since(begin) < s.mode.writeFor {
		check(write())
		calls++
	}
	elapsed := time.Since(begin)
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != calls*eventsPerWrite {
		t.Fatalf("outbox holds %d rows after %d writes of %d events", rows, calls, eventsPerWrite)
	}
	rate := float64((calls-1)*eventsPerWrite) / elapsed.Seconds()
	progress("   %s, 1 statement per call", perSecond(rate, "events/s"))
	s.add(row{what: fmt.Sprintf("outbox.Write of %d events per transaction, one connection", eventsPerWrite),
		figure: perSecond(rate, "events/s") + ", 1 statement per call", goal: "1 statement per call", met: "yes"})
}

// queryCounter counts the statements a connection sends.
type queryCounter struct{ n atomic.Int64 }

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
