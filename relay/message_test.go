package relay

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestNewMessage(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	exchange := "orders"
	row := Row{
		ID: 7, TxID: 900, EventID: "0b6f1c3e-8f0e-4a57-9d2a-3c1e4f5a6b7c",
		AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced",
		RoutingKey: "orders.placed", Payload: []byte{0, 1, 2, 0xff}, ContentType: "application/octet-stream",
		Headers:   []byte(`{"s":"x","i":3,"neg":-9007199254740993,"f":2.5,"b":true,"aggregate_id":"spoofed","outbox_id":"spoofed"}`),
		CreatedAt: created,
	}

	t.Run("row exchange and every field", func(t *testing.T) {
		t.Parallel()
		r := row
		r.Exchange = &exchange
		m, err := NewMessage(&r, "default-x")
		if err != nil {
			t.Fatal(err)
		}
		want := Message{
			Aggregate: Aggregate{Type: "order", ID: "42"},
			Exchange:  "orders", RoutingKey: "orders.placed", MessageID: row.EventID, Type: "OrderPlaced",
			ContentType: "application/octet-stream", Timestamp: created, Body: []byte{0, 1, 2, 0xff},
			Headers: map[string]any{
				"s": "x", "i": int64(3), "neg": int64(-9007199254740993), "f": 2.5, "b": true,
				"aggregate_type": "order", "aggregate_id": "42", "outbox_id": int64(7),
			},
		}
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("got  %#v\nwant %#v", m, want)
		}
	})

	t.Run("NULL exchange uses the default", func(t *testing.T) {
		t.Parallel()
		r := row
		m, err := NewMessage(&r, "default-x")
		if err != nil {
			t.Fatal(err)
		}
		if m.Exchange != "default-x" {
			t.Fatalf("exchange %q, want default-x", m.Exchange)
		}
	})

	t.Run("empty headers", func(t *testing.T) {
		t.Parallel()
		for _, h := range []string{"", "{}", " {} "} {
			r := row
			r.Headers = []byte(h)
			m, err := NewMessage(&r, "")
			if err != nil {
				t.Fatalf("%q: %v", h, err)
			}
			if len(m.Headers) != 3 {
				t.Fatalf("%q: headers %v, want only the relay's three", h, m.Headers)
			}
		}
	})

	for _, bad := range []string{`[]`, `null`, `"s"`, `{"a":{"b":1}}`, `{"a":[1]}`, `{"a":null}`, `{"a":1e999}`, `{"a":1} {}`, `{`} {
		t.Run("rejects "+bad, func(t *testing.T) {
			t.Parallel()
			r := row
			r.Headers = []byte(bad)
			if _, err := NewMessage(&r, ""); !errors.Is(err, ErrBadHeaders) {
				t.Fatalf("err = %v, want ErrBadHeaders", err)
			}
		})
	}
}

// FuzzNewMessage checks that headers JSON of any shape either maps to
// AMQP-safe values or fails with ErrBadHeaders, and never panics.
func FuzzNewMessage(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":"b","c":true,"d":1.5}`, `[]`, `{"a":{"b":null}}`, `{"a":1e400}`, `{"":""}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, headers []byte) {
		row := Row{ID: 1, EventID: "e", AggregateType: "a", AggregateID: "1", Headers: headers}
		m, err := NewMessage(&row, "")
		if err != nil {
			if !errors.Is(err, ErrBadHeaders) {
				t.Fatalf("error %v does not wrap ErrBadHeaders", err)
			}
			return
		}
		for k, v := range m.Headers {
			switch v.(type) {
			case string, bool, int64, float64:
			default:
				t.Fatalf("header %q has type %T", k, v)
			}
		}
		if m.Headers["outbox_id"] != int64(1) || m.Headers["aggregate_id"] != "1" {
			t.Fatalf("relay headers overridden: %v", m.Headers)
		}
	})
}
