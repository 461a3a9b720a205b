package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
)

// ErrInvalidEvent is matched, under errors.Is, by every error that reports an
// event refused before the database was touched. The error itself is a
// [*ValidationError].
var ErrInvalidEvent = errors.New("outbox: invalid event")

// ValidationError reports why an event was refused. Nothing of the batch it
// belongs to was sent to the database.
type ValidationError struct {
	// Index is the event's position in the events passed to Write.
	Index int
	// Field names the Event field at fault, e.g. "RoutingKey" or
	// `Headers["tenant"]`.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error implements the error interface.
func (e *ValidationError) Error() string {
	return fmt.Sprintf("outbox: invalid event %d: %s: %s", e.Index, e.Field, e.Reason)
}

// Is reports whether target is [ErrInvalidEvent].
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidEvent }

// maxShortString is the AMQP 0-9-1 limit on short strings: exchange and
// routing key, the type and content_type properties and header names.
const maxShortString = 255

// reservedHeaders are set by the relay on every message and override what a
// row's headers say, so writing them is always a mistake.
var reservedHeaders = []string{"aggregate_type", "aggregate_id", "outbox_id"}

// validate checks e, the index-th event, against the table's constraints and
// AMQP's limits, and returns its headers encoded as a JSON object.
func validate(index int, e *Event) (headers string, err error) {
	fail := func(field, format string, args ...any) error {
		return &ValidationError{Index: index, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	text := []struct {
		field    string
		value    string
		required bool
		max      int
	}{
		{"AggregateType", e.AggregateType, true, 0},
		{"AggregateID", e.AggregateID, true, 0},
		{"EventType", e.EventType, true, maxShortString},
		{"Exchange", e.Exchange, false, maxShortString},
		{"RoutingKey", e.RoutingKey, true, maxShortString},
		{"ContentType", e.ContentType, false, maxShortString},
	}
	for _, t := range text {
		if t.required && t.value == "" {
			return "", fail(t.field, "must not be empty")
		}
		if reason := badText(t.value, t.max); reason != "" {
			return "", fail(t.field, "%s", reason)
		}
	}
	if e.EventID != "" && !isUUID(e.EventID) {
		return "", fail("EventID", "%q is not a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", e.EventID)
	}
	if len(e.Headers) == 0 {
		if size := headerFrameSize(e, nil); size > maxHeaderFrame {
			return "", fail("AggregateID", "the message's headers and properties would take about %d bytes, more than fit in one AMQP frame (%d, RabbitMQ's default frame size); the relay would refuse the row", size, maxHeaderFrame)
		}
		return "{}", nil
	}
	values := make(map[string]any, len(e.Headers))
	// Sorted, so that of several bad headers the same one is always reported.
	for _, name := range slices.Sorted(maps.Keys(e.Headers)) {
		field := fmt.Sprintf("Headers[%q]", name)
		if name == "" {
			return "", fail("Headers", "header name must not be empty")
		}
		if reason := badText(name, maxShortString); reason != "" {
			return "", fail(field, "name %s", reason)
		}
		if slices.Contains(reservedHeaders, name) {
			return "", fail(field, "reserved: the relay sets this header itself")
		}
		v, err := headerValue(e.Headers[name])
		if err != nil {
			return "", fail(field, "%v", err)
		}
		values[name] = v
	}
	if size := headerFrameSize(e, values); size > maxHeaderFrame {
		return "", fail("Headers", "the message's headers and properties take about %d bytes, more than fit in one AMQP frame (%d, RabbitMQ's default frame size); the relay would refuse the row", size, maxHeaderFrame)
	}
	b, err := json.Marshal(values)
	if err != nil {
		// Unreachable: headerValue returns only JSON-encodable values.
		return "", fail("Headers", "%v", err)
	}
	return string(b), nil
}

// maxHeaderFrame is the frame size RabbitMQ negotiates by default: a
// message's properties and headers must fit in one frame.
const maxHeaderFrame = 131072

// headerFrameSize estimates, from above, the content header frame the
// relay sends for e with headers values: the properties it sets, the
// headers it adds (aggregate_type, aggregate_id, outbox_id) and room for a
// trace context.
func headerFrameSize(e *Event, values map[string]any) int {
	const fixed = 8 + 14 + 1 + 1 + 36 + 8 // frame, class..flags, delivery mode, message id, timestamp
	const traceRoom = 600                 // traceparent and a tracestate, which Write may add
	n := fixed + traceRoom + 1 + max(len(e.ContentType), len("application/json")) + 1 + len(e.EventType) + 4
	n += 2 + len("aggregate_type") + 4 + len(e.AggregateType)
	n += 2 + len("aggregate_id") + 4 + len(e.AggregateID)
	n += 2 + len("outbox_id") + 8
	for k, v := range values {
		n += 2 + len(k) + 8
		if s, ok := v.(string); ok {
			n += 4 + len(s)
		}
	}
	return n
}

// badText says what makes s unfit for a text column (and, when max > 0, an
// AMQP short string), or "" if nothing does.
func badText(s string, max int) string {
	switch {
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	case strings.IndexByte(s, 0) >= 0:
		return "contains a NUL byte"
	case max > 0 && len(s) > max:
		return fmt.Sprintf("%d bytes long, longer than the AMQP limit of %d", len(s), max)
	}
	return ""
}

// headerValue returns v as a string, bool, int64, uint64, float32 or float64, the
// values a flat JSON object of AMQP headers can hold. Named types are
// converted to their kind, so that a MarshalJSON method on them cannot
// produce an object or array, which the relay would refuse to publish
// (parking the row as dead).
func headerValue(v any) (any, error) {
	if v == nil {
		return nil, errors.New("nil value: header values must be strings, numbers or booleans")
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String:
		s := rv.String()
		if reason := badText(s, 0); reason != "" {
			return nil, errors.New(reason)
		}
		return s, nil
	case reflect.Bool:
		return rv.Bool(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return rv.Uint(), nil
	case reflect.Float32, reflect.Float64:
		f := rv.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%v cannot be stored in JSON", f)
		}
		if rv.Kind() == reflect.Float32 {
			return float32(f), nil // encodes as 0.1, not 0.10000000149011612
		}
		return f, nil
	}
	return nil, fmt.Errorf("unsupported type %T: header values must be strings, numbers or booleans", v)
}

// isUUID reports whether s is a UUID in the canonical 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
