package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Message is what the Publisher sends for one row: every AMQP field the
// product contract fixes. Delivery mode (persistent) and the mandatory flag
// are always set by the Publisher.
type Message struct {
	// Aggregate is the ordering key: a Publisher that spreads messages
	// over several channels keeps each aggregate on one of them.
	Aggregate   Aggregate
	Exchange    string
	RoutingKey  string
	MessageID   string
	Type        string
	ContentType string
	Timestamp   time.Time
	Headers     map[string]any // string, int64, float64 or bool values
	Body        []byte
}

// ErrBadHeaders reports a row whose headers cannot become AMQP headers.
var ErrBadHeaders = errors.New("bad headers")

// NewMessage maps a row to the message that publishes it. Rows whose exchange
// is NULL go to defaultExchange. The row's headers must be a JSON object of
// string, number and boolean values; the relay adds aggregate_type,
// aggregate_id and outbox_id, which take precedence over keys of those names.
func NewMessage(row *Row, defaultExchange string) (Message, error) {
	headers, err := parseHeaders(row.Headers)
	if err != nil {
		return Message{}, fmt.Errorf("row %d: %w", row.ID, err)
	}
	headers["aggregate_type"] = row.AggregateType
	headers["aggregate_id"] = row.AggregateID
	headers["outbox_id"] = row.ID

	exchange := defaultExchange
	if row.Exchange != nil {
		exchange = *row.Exchange
	}
	return Message{
		Aggregate:   row.Aggregate(),
		Exchange:    exchange,
		RoutingKey:  row.RoutingKey,
		MessageID:   row.EventID,
		Type:        row.EventType,
		ContentType: row.ContentType,
		Timestamp:   row.CreatedAt,
		Headers:     headers,
		Body:        row.Payload,
	}, nil
}

// parseHeaders decodes a flat JSON object. Integral numbers that fit become
// int64, other numbers float64, so consumers see 3 as an integer and 2.5 as a
// double.
func parseHeaders(raw []byte) (map[string]any, error) {
	headers := make(map[string]any, 4)
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "{}" { // most rows: nothing to decode
		return headers, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrBadHeaders, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadHeaders)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadHeaders)
	}
	for k, v := range obj {
		switch v := v.(type) {
		case string, bool:
			headers[k] = v
		case json.Number:
			n, err := number(v)
			if err != nil {
				return nil, fmt.Errorf("%w: header %q: %v", ErrBadHeaders, k, err)
			}
			headers[k] = n
		case nil:
			return nil, fmt.Errorf("%w: header %q is null; use a string, number or boolean", ErrBadHeaders, k)
		default:
			return nil, fmt.Errorf("%w: header %q is a JSON %s; use a string, number or boolean", ErrBadHeaders, k, jsonKind(v))
		}
	}
	return headers, nil
}

func number(n json.Number) (any, error) {
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("number %s is out of range", n)
	}
	return f, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	default:
		return fmt.Sprintf("%T", v)
	}
}
