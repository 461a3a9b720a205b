package outbox_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// bundle is what most tests need: a fresh database with the schema, and a
// connection to it that counts what it sends.
type bundle struct {
	url    string
	conn   *pgx.Conn
	tracer *queryTracer
	wire   *wireCounter
}

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{url: testenv.Database(t), tracer: &queryTracer{}, wire: &wireCounter{}}
	b.conn = connect(t, b.url, func(cfg *pgx.ConnConfig) {
		cfg.Tracer = b.tracer
		// Plain text, so that countingConn sees the protocol messages.
		cfg.TLSConfig, cfg.Fallbacks = nil, nil
		dialer := &net.Dialer{}
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, counter: b.wire}, nil
		}
	})
	return b
}

// connect opens a pgx connection to url, closed when the test ends.
func connect(t testing.TB, url string, configure func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(cfg)
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// queryTracer records the SQL of every query a connection runs.
type queryTracer struct {
	mu      sync.Mutex
	queries []string
}

func (q *queryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queries = append(q.queries, data.SQL)
	return ctx
}

func (q *queryTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// take returns the queries recorded since the last take.
func (q *queryTracer) take() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	queries := q.queries
	q.queries = nil
	return queries
}

// wireCounter counts round trips on a connection: the frontend messages
// after which the client waits for the server's ReadyForQuery, that is Sync
// (extended protocol) and Query (simple protocol). It parses the message
// framing of what the client writes, since one message may span several
// socket writes and one write may carry several messages.
type wireCounter struct {
	mu      sync.Mutex
	started bool   // the untyped startup message is behind us
	header  []byte // the partial header of the current message
	left    int    // bytes of the current message's body still to come
	trips   int
}

func (w *wireCounter) observe(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(p) > 0 {
		if w.left > 0 {
			n := min(w.left, len(p))
			w.left -= n
			p = p[n:]
			continue
		}
		headerLen := 5 // type byte and int32 length
		if !w.started {
			headerLen = 4 // the startup message has no type byte
		}
		n := min(headerLen-len(w.header), len(p))
		w.header = append(w.header, p[:n]...)
		p = p[n:]
		if len(w.header) < headerLen {
			continue
		}
		length := int(binary.BigEndian.Uint32(w.header[headerLen-4:]))
		w.left = length - 4
		if w.started && (w.header[0] == 'S' || w.header[0] == 'Q') {
			w.trips++
		}
		w.started = true
		w.header = w.header[:0]
	}
}

func (w *wireCounter) roundTrips() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.trips
}

type countingConn struct {
	net.Conn
	counter *wireCounter
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.counter.observe(p)
	return c.Conn.Write(p)
}

// storedRow is one outbox row as read back, with every column.
type storedRow struct {
	ID            int64
	EventID       string
	AggregateType string
	AggregateID   string
	EventType     string
	Exchange      *string
	RoutingKey    string
	Payload       []byte
	ContentType   string
	Headers       string
	CreatedAt     string
	TxID          string
}

// readRows returns the rows of table in id order.
func readRows(t testing.TB, conn *pgx.Conn, table string) []storedRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
		SELECT id, event_id::text, aggregate_type, aggregate_id, event_type, exchange,
		       routing_key, payload, content_type, headers::text, created_at::text, txid::text
		FROM `+table+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowToStructByPos[storedRow])
	if err != nil {
		t.Fatal(err)
	}
	return stored
}

// checkStored fails the test unless rows hold exactly events, in order,
// with the writer's rules for empty fields applied.
func checkStored(t testing.TB, rows []storedRow, events []outbox.Event) {
	t.Helper()
	if len(rows) != len(events) {
		t.Fatalf("got %d rows, want %d", len(rows), len(events))
	}
	seen := map[string]bool{}
	for i, e := range events {
		r := rows[i]
		if seen[r.EventID] {
			t.Errorf("row %d: event_id %s repeated", i, r.EventID)
		}
		seen[r.EventID] = true
		wantID := strings.ToLower(e.EventID)
		if e.EventID == "" && len(r.EventID) != 36 || e.EventID != "" && r.EventID != wantID {
			t.Errorf("row %d: event_id = %q, want %q (empty: generated)", i, r.EventID, wantID)
		}
		if r.AggregateType != e.AggregateType || r.AggregateID != e.AggregateID || r.EventType != e.EventType || r.RoutingKey != e.RoutingKey {
			t.Errorf("row %d: (aggregate_type, aggregate_id, event_type, routing_key) = (%q, %q, %q, %q), want (%q, %q, %q, %q)",
				i, r.AggregateType, r.AggregateID, r.EventType, r.RoutingKey, e.AggregateType, e.AggregateID, e.EventType, e.RoutingKey)
		}
		switch {
		case e.Exchange == "" && r.Exchange != nil:
			t.Errorf("row %d: exchange = %q, want NULL", i, *r.Exchange)
		case e.Exchange != "" && (r.Exchange == nil || *r.Exchange != e.Exchange):
			t.Errorf("row %d: exchange = %v, want %q", i, r.Exchange, e.Exchange)
		}
		if !bytes.Equal(r.Payload, e.Payload) {
			t.Errorf("row %d: payload = %q, want %q", i, r.Payload, e.Payload)
		}
		wantCT := e.ContentType
		if wantCT == "" {
			wantCT = "application/json"
		}
		if r.ContentType != wantCT {
			t.Errorf("row %d: content_type = %q, want %q", i, r.ContentType, wantCT)
		}
		if got, want := decodeJSON(t, r.Headers), normalize(t, e.Headers); !equalJSON(got, want) {
			t.Errorf("row %d: headers = %s, want %v", i, r.Headers, want)
		}
		if r.CreatedAt == "" || r.TxID == "" {
			t.Errorf("row %d: created_at %q, txid %q: want the defaults", i, r.CreatedAt, r.TxID)
		}
	}
}

func decodeJSON(t testing.TB, s string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return m
}

// normalize is h as it reads back from jsonb: numbers as json.Number.
func normalize(t testing.TB, h map[string]any) map[string]any {
	t.Helper()
	if h == nil {
		return map[string]any{}
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return decodeJSON(t, string(b))
}

func equalJSON(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// sampleEvents exercises every column and every rule for empty fields.
func sampleEvents() []outbox.Event {
	return []outbox.Event{
		{
			AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced",
			RoutingKey: "orders.placed", Payload: []byte(`{"id":42}`),
		},
		{
			AggregateType: "order", AggregateID: "42", EventType: "OrderPaid",
			Exchange: "orders", RoutingKey: "orders.paid", Payload: []byte{0, 1, 2, 0xff},
			ContentType: "application/octet-stream",
			Headers:     map[string]any{"tenant": "acme", "attempt": 3, "ratio": 0.25, "urgent": true},
			EventID:     "6F9619FF-8B86-D011-B42D-00C04FC964FF",
		},
		{
			AggregateType: "customer", AggregateID: "c-7", EventType: "CustomerPinged",
			RoutingKey: "customers.pinged", Payload: nil, Headers: map[string]any{},
		},
	}
}
