package postgres

import (
	"strings"
	"testing"
)

// TestRedactNeverShowsThePassword feeds Describe, CheckURL and
// Config.Validate (through redactParseError) connection strings in every
// form, valid or not, and looks for any piece of the password in what they
// return. Each password is made of pieces that occur nowhere else in the
// input, so finding one means it leaked.
func TestRedactNeverShowsThePassword(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		conn   string
		pieces []string // of the password, none of which may show
		want   string   // Describe's answer, if it must describe conn
		refuse bool     // CheckURL must refuse conn
	}{
		{"url", "postgres://relay:S3cretPW@db.internal:5432/orders", []string{"S3cretPW"}, "relay@db.internal:5432/orders", false},
		{"url postgresql scheme", "postgresql://relay:S3cretPW@db/orders?sslmode=disable", []string{"S3cretPW"}, "relay@db:5432/orders", false},
		{"url percent-encoded", "postgres://relay:S3cret%40PWtail%2Fx@db/orders?sslmode=disable", []string{"S3cret", "PWtail"}, "relay@db:5432/orders", false},
		{"url unencoded @", "postgres://u:S3cret@PWtail@db/orders", []string{"S3cret", "PWtail"}, "", true},
		{"url unencoded @ bad setting", "postgres://u:S3cret@PWtail@db/orders?sslmode=bogus", []string{"S3cret", "PWtail"}, "", true},
		{"url unencoded / and @", "postgres://u:S3cret/PWtail@db/orders", []string{"S3cret", "PWtail"}, "", true},
		{"url port-like / and @", "postgres://u:1234/PWtail@db/orders", []string{"1234/", "PWtail"}, "", true},
		{"url @ then /", "postgres://u:S3cret@PW/tail@db/orders", []string{"S3cret", "PW/tail"}, "", true},
		{"url unencoded ? and #", "postgres://u:S3cret?PW#tail@db/orders?sslmode=disable", []string{"S3cret", "PW#tail"}, "u@db:5432/orders", false},
		{"url unencoded :", "postgres://u:S3cret:PWtail@db/orders?sslmode=disable", []string{"S3cret", "PWtail"}, "u@db:5432/orders", false},
		{"url bad port", "postgres://relay:S3cretPW@db:port/orders", []string{"S3cretPW"}, "", false},
		{"url bad sslmode", "postgres://relay:S3cretPW@db/orders?sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"url password in query", "postgres://relay@db/orders?password=S3cretPW&sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"url multi-host", "postgres://relay:S3cretPW@h1:5432,h2:5433/orders?sslmode=disable", []string{"S3cretPW"}, "relay@h1:5432,h2:5433/orders", false},
		{"url multi-host prefer", "postgres://relay:S3cretPW@h1,h2/orders", []string{"S3cretPW"}, "relay@h1:5432,h2:5432/orders", false},
		{"url multi-host unencoded @", "postgres://relay:S3cret@PWtail@h1,h2/orders", []string{"S3cret", "PWtail"}, "", true},
		{"url multi-host bad ports", "postgres://relay:S3cretPW@h1:1,h2:2,h3:3:4/orders", []string{"S3cretPW"}, "", false},
		{"dsn", "host=db user=relay password=S3cretPW dbname=orders sslmode=disable", []string{"S3cretPW"}, "relay@db:5432/orders", false},
		{"dsn bad sslmode", "host=db password=S3cretPW sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"dsn spaces around =", "host=x password = S3cretPW sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"dsn tab before =", "host=x password\t=S3cretPW sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"dsn quoted", "host=x password='S3cret PWtail' sslmode=bogus", []string{"S3cret", "PWtail"}, "", false},
		{"dsn quoted with spaces around =", "host=x password = 'S3cret PWtail' sslmode=bogus", []string{"S3cret", "PWtail"}, "", false},
		{"dsn quoted valid", "host=db user=relay password='S3cret PWtail' dbname=orders sslmode=disable", []string{"S3cret", "PWtail"}, "relay@db:5432/orders", false},
		{"dsn escaped quote", `host=db user=relay password='S3cret\'PWtail' dbname=orders sslmode=disable`, []string{"S3cret", "PWtail"}, "relay@db:5432/orders", false},
		{"dsn unquoted space", "host=x password=S3cret PWtail sslmode=disable", []string{"S3cret", "PWtail"}, "", true},
		{"dsn unterminated quote", "host=x password='S3cret PWtail", []string{"S3cret", "PWtail"}, "", true},
		{"dsn bad port", "host=x port=bogus password=S3cretPW", []string{"S3cretPW"}, "", false},
		{"dsn sslpassword", "host=x sslpassword=S3cretPW sslmode=bogus", []string{"S3cretPW"}, "", false},
		{"dsn multi-host", "host=h1,h2 port=5432,5433 user=relay password=S3cretPW dbname=orders sslmode=disable", []string{"S3cretPW"}, "relay@h1:5432,h2:5433/orders", false},
	}
	table, err := ParseTable("outbox")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			shown := map[string]string{"Describe": Describe(c.conn)}
			if err := CheckURL(c.conn); err != nil {
				shown["CheckURL"] = err.Error()
			} else if c.refuse {
				t.Errorf("CheckURL accepts %q", c.conn)
			}
			if err := (Config{URL: c.conn, Table: table}).Validate(); err != nil {
				shown["Validate"] = err.Error()
			}
			for who, text := range shown {
				for _, p := range c.pieces {
					if strings.Contains(text, p) {
						t.Errorf("%s shows %q of the password: %q", who, p, text)
					}
				}
			}
			if c.want != "" && shown["Describe"] != c.want {
				t.Errorf("Describe = %q, want %q", shown["Describe"], c.want)
			}
		})
	}
}

// TestRedactParseErrorKeepsTheProblem checks that the message still says
// what is wrong once the connection string is gone from it.
func TestRedactParseErrorKeepsTheProblem(t *testing.T) {
	t.Parallel()
	table, err := ParseTable("outbox")
	if err != nil {
		t.Fatal(err)
	}
	for conn, want := range map[string]string{
		"host=x password = S3cretPW sslmode=bogus":           "sslmode is invalid",
		"postgres://relay:S3cretPW@db:port/orders":           "invalid port",
		"postgres://u:S3cret@PWtail@db/orders?sslmode=bogus": "percent-encode",
		"host=x password=S3cret PWtail":                      "quote a value with spaces",
	} {
		err := (Config{URL: conn, Table: table}).Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: Validate = %v, want it to say %q", conn, err, want)
		}
	}
}
