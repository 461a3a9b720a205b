package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"unicode/utf8"
)

// parseHeaders decodes a flat JSON object. Integral numbers that fit become
// int64, other numbers float64, so consumers see 3 as an integer and 2.5 as a
// double.
//
// It runs for every row, so the common shape (plain strings, numbers and
// booleans, as PostgreSQL prints a jsonb object) is scanned by hand. Anything
// else, escapes and every error included, goes through encoding/json, which
// stays the reference: the scan only ever accepts what it accepts, with the
// same result (FuzzParseHeaders checks this).
func parseHeaders(raw []byte) (map[string]any, error) {
	headers := make(map[string]any, 4)
	raw = bytes.Trim(raw, jsonSpace)
	if len(raw) == 0 || string(raw) == "{}" { // most rows: nothing to decode
		return headers, nil
	}
	if scanFlat(raw, headers) {
		return headers, nil
	}
	clear(headers)
	return decodeHeaders(raw, headers)
}

// jsonSpace is the whitespace JSON allows around values.
const jsonSpace = " \t\r\n"

// decodeHeaders is parseHeaders through encoding/json, on raw without
// surrounding whitespace.
func decodeHeaders(raw []byte, headers map[string]any) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrBadHeaders, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadHeaders)
	}
	if dec.InputOffset() != int64(len(raw)) {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadHeaders)
	}
	for k, v := range obj {
		switch v := v.(type) {
		case string, bool:
			headers[k] = v
		case json.Number:
			n, err := number(string(v))
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

// number converts a JSON number: int64 when it is integral and fits,
// float64 otherwise.
func number(n string) (any, error) {
	if i, err := json.Number(n).Int64(); err == nil {
		return i, nil
	}
	f, err := json.Number(n).Float64()
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

// scanFlat adds the members of a flat JSON object of strings without
// escapes, numbers and booleans to headers. It reports false, having added
// some members maybe, for anything else: the caller then decodes the
// object with encoding/json.
func scanFlat(b []byte, headers map[string]any) bool {
	s := scanner{b: b}
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return s.end()
	}
	for {
		k, ok := s.str()
		if !ok || !s.byte(':') {
			return false
		}
		v, ok := s.value()
		if !ok {
			return false
		}
		headers[k] = v
		if s.byte('}') {
			return s.end()
		}
		if !s.byte(',') {
			return false
		}
	}
}

// scanner reads JSON tokens from b, from i on.
type scanner struct {
	b []byte
	i int
}

// space skips JSON whitespace (jsonSpace).
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte consumes c, after whitespace, if it comes next.
func (s *scanner) byte(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// str reads a string without escapes, after whitespace.
func (s *scanner) str() (string, bool) {
	if !s.byte('"') {
		return "", false
	}
	start, ascii := s.i, true
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			if !ascii && !utf8.Valid(v) {
				return "", false // encoding/json replaces bad bytes
			}
			return string(v), true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// value reads a string, a number or a boolean, after whitespace.
func (s *scanner) value() (any, bool) {
	s.space()
	if s.i == len(s.b) {
		return nil, false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.str()
	case c == 't':
		return true, s.word("true")
	case c == 'f':
		return false, s.word("false")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return nil, false
}

func (s *scanner) word(w string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(w)) {
		return false
	}
	s.i += len(w)
	return true
}

// number reads a number in JSON's grammar and converts it like
// encoding/json's json.Number would be.
func (s *scanner) number() (any, bool) {
	start := s.i
	s.skip('-')
	switch {
	case s.skip('0'):
	case s.digits() == 0:
		return nil, false
	}
	if s.skip('.') && s.digits() == 0 {
		return nil, false
	}
	if s.skip('e') || s.skip('E') {
		if !s.skip('+') {
			s.skip('-')
		}
		if s.digits() == 0 {
			return nil, false
		}
	}
	n, err := number(string(s.b[start:s.i]))
	return n, err == nil
}

// skip consumes c if it comes next.
func (s *scanner) skip(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// digits consumes decimal digits and returns how many.
func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}
