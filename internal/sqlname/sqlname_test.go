package sqlname

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"outbox":                `"outbox"`,
		"app.outbox":            `"app"."outbox"`,
		"Order":                 `"Order"`,
		"_x9":                   `"_x9"`,
		strings.Repeat("a", 63): `"` + strings.Repeat("a", 63) + `"`,
	} {
		n, err := Parse(in, MaxIdentifier)
		if err != nil || n.Quoted() != want || n.String() != in {
			t.Errorf("Parse(%q) = %v (quoted %s), %v; want %s", in, n, n.Quoted(), err, want)
		}
	}
	for _, bad := range []string{"", "a.b.c", "1x", "a b", `a"b`, "a;drop", ".x", "x.", strings.Repeat("a", 64)} {
		if n, err := Parse(bad, MaxIdentifier); err == nil {
			t.Errorf("Parse(%q) accepted it as %v", bad, n)
		}
	}
	if _, err := Parse("app.inbox_longer", 10); err == nil || !strings.Contains(err.Error(), "longer than 10") {
		t.Errorf("a table part over maxTable: %v", err)
	}
	if _, err := Parse("a_schema_of_eleven.x", 1); err != nil {
		t.Errorf("maxTable bounds the schema: %v", err)
	}
}

func TestSibling(t *testing.T) {
	n, _ := Parse("app.outbox", MaxIdentifier)
	if got := n.Sibling("outbox_relay_position"); got != `"app"."outbox_relay_position"` {
		t.Errorf("Sibling = %s", got)
	}
	if n.QuotedSchema() != `"app"` {
		t.Errorf("QuotedSchema = %s", n.QuotedSchema())
	}
	bare, _ := Parse("outbox", MaxIdentifier)
	if bare.Sibling("x") != `"x"` || bare.QuotedSchema() != "" {
		t.Errorf("a name without schema: %s, %q", bare.Sibling("x"), bare.QuotedSchema())
	}
}
