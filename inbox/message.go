package inbox

import (
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Message is what a [Handler] sees of a delivery. It carries no way to ack:
// the Inbox acks, after the handler's transaction commits.
type Message struct {
	// ID is the AMQP message_id in canonical form (lower-case UUID with
	// hyphens): for a message from outbox-relay, the outbox row's event_id.
	ID string
	// Type is the AMQP type property (the outbox row's event_type).
	Type string
	// Exchange and RoutingKey are where the message was published.
	Exchange, RoutingKey string
	// ContentType is the AMQP content_type property.
	ContentType string
	// Timestamp is the AMQP timestamp property (the outbox row's
	// created_at, in whole seconds); zero when the publisher set none.
	Timestamp time.Time
	// Headers are the AMQP headers, as the broker delivered them. From
	// outbox-relay they include aggregate_type, aggregate_id and outbox_id,
	// and traceparent and tracestate when the writer recorded a trace
	// context (see [Message.TraceParent]).
	Headers amqp.Table
	// Body is the message body, unchanged.
	Body []byte
	// Redelivered is the broker's flag: this message may have been
	// delivered before (to this consumer or another).
	Redelivered bool
	// Attempt counts the handler's runs on this message, 1 for the first.
	// It survives restarts of the consumer; see [Config.MaxAttempts].
	Attempt int
}

// TraceParent returns the W3C trace context headers traceparent and
// tracestate of the message, empty when absent or not strings. They are
// passed through as received, unchecked: hand them to a propagator (such
// as OpenTelemetry's TraceContext) to continue the writer's trace.
func (m Message) TraceParent() (traceparent, tracestate string) {
	traceparent, _ = m.Headers["traceparent"].(string)
	tracestate, _ = m.Headers["tracestate"].(string)
	return traceparent, tracestate
}

// ErrMessageID is matched, under errors.Is, by the error [Inbox.Handle]
// returns for a delivery without a message_id, or with one that is not a
// UUID. Such a delivery cannot be deduplicated, so it is never processed:
// it is rejected without requeue (and also matches [ErrRejected]).
var ErrMessageID = errors.New("inbox: message_id missing or not a UUID")

// newMessage builds the handler's view of d, attempt number attempt.
func newMessage(d *amqp.Delivery, id string, attempt int) Message {
	return Message{
		ID:          id,
		Type:        d.Type,
		Exchange:    d.Exchange,
		RoutingKey:  d.RoutingKey,
		ContentType: d.ContentType,
		Timestamp:   d.Timestamp,
		Headers:     d.Headers,
		Body:        d.Body,
		Redelivered: d.Redelivered,
		Attempt:     attempt,
	}
}

// parseMessageID returns s as a canonical UUID (lower case, 8-4-4-4-12).
// It accepts the canonical form in either case, and 32 hex digits without
// hyphens, each optionally in braces: spellings that PostgreSQL's uuid type
// reads too, so that one UUID always dedups to one key, however its
// publisher wrote it.
func parseMessageID(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: the message has no message_id", ErrMessageID)
	}
	bad := fmt.Errorf("%w: message_id %q", ErrMessageID, s)
	u := s
	if strings.HasPrefix(u, "{") && strings.HasSuffix(u, "}") {
		u = u[1 : len(u)-1]
	}
	switch len(u) {
	case 36:
		for _, i := range []int{8, 13, 18, 23} {
			if u[i] != '-' {
				return "", bad
			}
		}
		u = strings.ReplaceAll(u, "-", "")
	case 32:
	default:
		return "", bad
	}
	u = strings.ToLower(u)
	if len(u) != 32 || strings.Trim(u, "0123456789abcdef") != "" {
		return "", bad
	}
	return u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32], nil
}
