package postgres

import "testing"

func TestParseTable(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Table{
		"outbox": {Name: "outbox"}, "svc.outbox": {Schema: "svc", Name: "outbox"}, "_x9.Y_1": {Schema: "_x9", Name: "Y_1"},
	} {
		got, err := ParseTable(in)
		if err != nil || got != want {
			t.Errorf("ParseTable(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a.b.c", "outbox; DROP TABLE x", `"outbox"`, "out-box", "1outbox", "a.", ".a", "o\x00", "o'b", "o b", string(make([]byte, 64))} {
		if _, err := ParseTable(bad); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
}
