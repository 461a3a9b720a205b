package relay

import (
	"errors"
	"fmt"
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

// message maps row to its message as NewMessage does, and refuses a row
// whose payload is larger than MaxPayloadBytes (its payload was not
// loaded).
func (c Config) message(row *Row) (Message, error) {
	if row.PayloadSize > c.MaxPayloadBytes {
		return Message{}, fmt.Errorf("%w: row %d: its payload of %d bytes is larger than the relay's limit of %d (RELAY_MAX_PAYLOAD_BYTES)",
			ErrInvalid, row.ID, row.PayloadSize, c.MaxPayloadBytes)
	}
	return NewMessage(row, c.Exchange)
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
		return Message{}, fmt.Errorf("%w: row %d: %w", ErrInvalid, row.ID, err)
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
