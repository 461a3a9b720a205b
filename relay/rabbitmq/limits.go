package rabbitmq

import (
	"fmt"

	"github.com/outboxrelay/outboxrelay/relay"
)

// AMQP 0-9-1 limits that the client enforces by tearing the connection
// down: a message that breaks one must never be sent, or every message
// behind it on the connection fails with it.
const (
	// maxShortString is the most bytes of an AMQP short string: exchange,
	// routing key, the content_type, message_id and type properties,
	// header names.
	maxShortString = 255
	// frameOverhead is an AMQP frame's type, channel, size and end octet.
	frameOverhead = 8
)

// fits reports why m cannot be sent on a connection whose frames carry
// at most frameMax bytes (0: unknown, not checked), or nil.
func fits(m *relay.Message, frameMax int) error {
	for _, f := range [...]struct {
		name, v string
	}{{"exchange", m.Exchange}, {"routing key", m.RoutingKey}, {"event type (AMQP type)", m.Type},
		{"content type", m.ContentType}, {"message id", m.MessageID}} {
		if len(f.v) > maxShortString {
			return fmt.Errorf("its %s is %d bytes; AMQP allows %d", f.name, len(f.v), maxShortString)
		}
	}
	for k := range m.Headers {
		if len(k) > maxShortString {
			return fmt.Errorf("header name %.40q... is %d bytes; AMQP allows %d", k, len(k), maxShortString)
		}
	}
	if size := headerFrameSize(m); frameMax > 0 && size > frameMax {
		return fmt.Errorf("its properties and headers take %d bytes, more than the broker's frame size of %d: a message's headers must fit in one frame", size, frameMax)
	}
	return nil
}

// headerFrameSize is the size of the content header frame amqp091-go
// writes for m: class, weight, body size and property flags, the
// properties the Publisher sets, and the headers table.
func headerFrameSize(m *relay.Message) int {
	n := frameOverhead + 2 + 2 + 8 + 2
	n += 1 + len(m.ContentType)
	n += 4 // headers table length
	for k, v := range m.Headers {
		n += 1 + len(k) + 1 // name, value type
		switch v := v.(type) {
		case string:
			n += 4 + len(v)
		case bool:
			n++
		default: // int64, float64
			n += 8
		}
	}
	n++ // delivery mode
	n += 1 + len(m.MessageID)
	if !m.Timestamp.IsZero() {
		n += 8
	}
	n += 1 + len(m.Type)
	return n
}
