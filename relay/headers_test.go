package relay

import (
	"bytes"
	"reflect"
	"testing"
)

// headerCases are headers of every shape: what PostgreSQL prints for a
// jsonb object, and what only encoding/json should handle.
var headerCases = []string{
	`{"b": true, "f": 2.5, "i": 3, "s": "x"}`,
	`{"a":1}`, `{ }`, `{"":""}`, `{"name": "Zoë", "sym": "→"}`,
	`{"n": -0, "e": 1e3, "E": 2E-2, "big": 9223372036854775808, "neg": -9007199254740993}`,
	`{"no": false, "no": true}`, `{"a": null, "a": 1}`,
	`{"esc": "a\"b"}`, `{"u": "\u00e9"}`, `{"bad": "` + "\xff" + `"}`,
	`{"a": null}`, `{"a": {"b": 1}}`, `{"a": [1]}`, `[]`, `"x"`, `null`, `{`,
	`{"a": 1,}`, `{,}`, `{"a" 1}`, `{"a": 1} {}`, `{"a": 1}x`, `{"a": 01}`,
	`{"a": +1}`, `{"a": .5}`, `{"a": 1.}`, `{"a": 1e}`, `{"a": 1e400}`,
	`{"a": truex}`, `{"a": tru}`, `{"a": "x` + "\n" + `"}`, `{'a': 1}`,
}

// TestScanFlatTakesTheCommonShape: the objects PostgreSQL prints for
// string, number and boolean headers never reach encoding/json.
func TestScanFlatTakesTheCommonShape(t *testing.T) {
	for _, h := range headerCases[:6] {
		got := map[string]any{}
		if !scanFlat([]byte(h), got) {
			t.Errorf("%s: left to encoding/json", h)
			continue
		}
		want, err := decodeHeaders([]byte(h), map[string]any{})
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: scanned %#v, encoding/json gives %#v, %v", h, got, want, err)
		}
	}
}

// TestParseHeadersAgreesWithEncodingJSON: whichever path a shape takes,
// the result is encoding/json's, errors included.
func TestParseHeadersAgreesWithEncodingJSON(t *testing.T) {
	for _, h := range headerCases {
		agree(t, []byte(h))
	}
}

// FuzzParseHeaders checks the hand scan against encoding/json on any input.
func FuzzParseHeaders(f *testing.F) {
	for _, h := range headerCases {
		f.Add([]byte(h))
	}
	f.Fuzz(agree)
}

func agree(t *testing.T, raw []byte) {
	raw = bytes.TrimSpace(raw)
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
