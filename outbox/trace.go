package outbox

import (
	"context"
	"encoding/json"
)

// The W3C Trace Context header names. The relay copies a row's headers to
// the AMQP message as they are, so a consumer finds the writer's trace
// context under the same names.
const (
	traceParentHeader = "traceparent"
	traceStateHeader  = "tracestate"
)

// traceContextKey is the context key of [ContextWithTraceParent]'s value.
type traceContextKey struct{}

// traceContext is a W3C trace context as the writer received it.
type traceContext struct {
	parent, state string
}

// ContextWithTraceParent returns a copy of ctx that carries a W3C trace
// context: traceparent and tracestate as they would travel in HTTP headers,
// e.g. "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" and
// "vendor=value" (tracestate may be empty). Every [Writer], the one behind
// [Write] included, adds them to the headers of the events it writes with
// such a context, and the relay publishes them as the AMQP headers
// traceparent and tracestate. It is the way to propagate a trace without
// OpenTelemetry; with OpenTelemetry, see [Writer.TraceContext], which this
// value overrides: an empty traceparent writes no trace context at all.
//
// A traceparent that is not well-formed (see [Writer.TraceContext]) is left
// out rather than failing the write, and so is a tracestate that is not
// printable ASCII.
func ContextWithTraceParent(ctx context.Context, traceparent, tracestate string) context.Context {
	return context.WithValue(ctx, traceContextKey{}, traceContext{traceparent, tracestate})
}

// traceContext returns the trace context of ctx: the one set with
// ContextWithTraceParent if any, as the most specific (an empty one turns
// the hook off), else what the Writer's hook finds.
func (w *Writer) traceContext(ctx context.Context) traceContext {
	if tc, ok := ctx.Value(traceContextKey{}).(traceContext); ok {
		return tc
	}
	if w.TraceContext != nil {
		parent, state := w.TraceContext(ctx)
		return traceContext{parent, state}
	}
	return traceContext{}
}

// addTraceContext adds the trace context of ctx to the encoded headers of
// events, one JSON object per event as toColumns made them. It never fails
// the write: a trace context that is not well-formed is left out, since
// tracing must not cost a business transaction. Events whose own Headers
// name traceparent or tracestate keep theirs and get neither: the caller's
// explicit choice wins, and a traceparent must not be paired with another
// trace's tracestate.
//
// The headers are merged as text, so a traced write costs one small string
// concatenation per event, and an untraced one nothing but a context lookup.
func (w *Writer) addTraceContext(ctx context.Context, events []Event, headers []string) {
	fields := w.traceContext(ctx).jsonFields()
	if fields == "" {
		return
	}
	alone := "{" + fields + "}"
	for i := range events {
		h := events[i].Headers
		if len(h) == 0 {
			headers[i] = alone
			continue
		}
		_, hasParent := h[traceParentHeader]
		_, hasState := h[traceStateHeader]
		if hasParent || hasState {
			continue
		}
		// A non-empty object from validate: "{...}", whose keys differ from
		// the ones added, so the result is a valid object without
		// duplicate keys.
		headers[i] = headers[i][:len(headers[i])-1] + "," + fields + "}"
	}
}

// jsonFields returns the trace context as the members of a JSON object,
// without braces, or "" if there is no valid traceparent. An invalid
// tracestate is dropped alone, as W3C Trace Context asks.
func (tc traceContext) jsonFields() string {
	if !validTraceParent(tc.parent) {
		return ""
	}
	// Quoted by encoding/json, which cannot fail on a string.
	parent, _ := json.Marshal(tc.parent)
	fields := `"` + traceParentHeader + `":` + string(parent)
	if tc.state != "" && printableASCII(tc.state) {
		state, _ := json.Marshal(tc.state)
		fields += `,"` + traceStateHeader + `":` + string(state)
	}
	return fields
}

// validTraceParent reports whether s is a traceparent as W3C Trace Context
// defines it: version "-" trace-id "-" parent-id "-" flags, in lowercase
// hex, with a trace-id and parent-id that are not all zeros and a version
// other than ff. Version 00 has exactly these four fields; a later version
// may append more after a "-", which are kept as they are for consumers
// that know that version.
func validTraceParent(s string) bool {
	const length = 55 // 2 + 1 + 32 + 1 + 16 + 1 + 2
	if len(s) < length || len(s) > length && (s[:2] == "00" || s[length] != '-') {
		return false
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	version, traceID, parentID, flags := s[0:2], s[3:35], s[36:52], s[53:55]
	return lowerHex(version) && version != "ff" &&
		lowerHex(traceID) && !allZeros(traceID) &&
		lowerHex(parentID) && !allZeros(parentID) &&
		lowerHex(flags)
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func allZeros(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

// printableASCII reports whether s holds only the characters W3C Trace
// Context allows in tracestate, space to tilde. Its finer grammar (keys,
// values, at most 32 members) is left to the consumer's parser, which must
// check it anyway.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// columns is toColumns with the trace context of ctx added to the headers.
func (w *Writer) columns(ctx context.Context, events []Event) ([]any, error) {
	args, err := toColumns(events)
	if err != nil {
		return nil, err
	}
	// The headers array is the last of insertSQL's parameters.
	w.addTraceContext(ctx, events, args[len(args)-1].([]string))
	return args, nil
}
