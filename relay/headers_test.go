package relay

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"testing"
)

// Headers of every shape. flatHeaders are what PostgreSQL prints for jsonb
// objects of strings, numbers and booleans: the hand scan takes them.
// otherHeaders are valid JSON objects it leaves to encoding/json, and
// badHeaders are not valid headers at all.
var (
	flatHeaders = []string{
		`{"b": true, "f": 2.5, "i": 3, "s": "x"}`,
		`{"a":1}`, `{ }`, `{"":""}`, `{"name": "Zoë", "sym": "→"}`,
		`{"n": -0, "e": 1e3, "E": 2E-2, "big": 9223372036854775808, "neg": -9007199254740993}`,
		`{"no": false, "no": true}`, "{\t\"a\"\r\n:\n1 }",
	}
	otherHeaders = []string{
		`{"esc": "a\"b"}`, `{"u": "\u00e9"}`, `{"bad": "` + "\xff" + `"}`, `{"a": null, "a": 1}`,
	}
	badHeaders = []string{
		`{"a": null}`, `{"a": {"b": 1}}`, `{"a": [1]}`, `[]`, `"x"`, `null`, `{`,
		`{"a": 1,}`, `{,}`, `{"a" 1}`, `{"a": 1} {}`, `{"a": 1}x`, `{"a":1}}`, `{"a":1}]`,
		`{"a": 01}`, `{"a": +1}`, `{"a": .5}`, `{"a": 1.}`, `{"a": 1e}`, `{"a": 1e400}`,
		`{"a": truex}`, `{"a": tru}`, `{"a": "x` + "\n" + `"}`, `{'a': 1}`, "\v{}", "{}\u00a0",
	}
)

// TestScanFlatTakesTheCommonShape: the objects PostgreSQL prints for
// string, number and boolean headers never reach encoding/json, and the
// rest always does.
func TestScanFlatTakesTheCommonShape(t *testing.T) {
	for _, h := range flatHeaders {
		if !scanFlat([]byte(h), map[string]any{}) {
			t.Errorf("%s: left to encoding/json", h)
		}
	}
	for _, h := range slices.Concat(otherHeaders, badHeaders) {
		if scanFlat([]byte(h), map[string]any{}) {
			t.Errorf("%q: taken by the hand scan", h)
		}
	}
}

// TestParseHeadersAgreesWithEncodingJSON: whichever path a shape takes,
// the result is encoding/json's, and what is not a flat object of
// strings, numbers and booleans is refused.
func TestParseHeadersAgreesWithEncodingJSON(t *testing.T) {
	for _, h := range slices.Concat(flatHeaders, otherHeaders) {
		if _, err := parseHeaders([]byte(h)); err != nil {
			t.Errorf("%q: %v", h, err)
		}
		agree(t, []byte(h))
	}
	for _, h := range badHeaders {
		if _, err := parseHeaders([]byte(h)); !errors.Is(err, ErrBadHeaders) {
			t.Errorf("%q: err = %v, want ErrBadHeaders", h, err)
		}
		agree(t, []byte(h))
	}
}

// FuzzParseHeaders checks the hand scan against encoding/json on any input.
func FuzzParseHeaders(f *testing.F) {
	for _, h := range slices.Concat(flatHeaders, otherHeaders, badHeaders) {
		f.Add([]byte(h))
	}
	f.Fuzz(agree)
}

func agree(t *testing.T, raw []byte) {
	raw = bytes.Trim(raw, jsonSpace)
	if len(raw) == 0 {
		return // parseHeaders takes no headers as none; encoding/json would not
	}
	got, gotErr := parseHeaders(raw)
	want, wantErr := decodeHeaders(raw, map[string]any{})
	if (gotErr == nil) != (wantErr == nil) || !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: got %#v, %v; encoding/json gives %#v, %v", raw, got, gotErr, want, wantErr)
	}
}

// BenchmarkParseHeaders compares the hand scan with encoding/json on a
// typical row's headers.
func BenchmarkParseHeaders(b *testing.B) {
	raw := []byte(`{"tenant": "acme", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attempt": 1}`)
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parseHeaders(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeHeaders(raw, make(map[string]any, 4)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
