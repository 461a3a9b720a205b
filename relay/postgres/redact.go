package postgres

import (
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Passwords are kept out of logs and error messages in three ways. Describe
// builds its text from the parsed parts that hold no secret. Parse errors
// lose pgx's quotation of the connection string, whose masking misses some
// spellings (password = x). And a connection string whose password's extent
// cannot be known is refused (CheckURL), since pgx would then take part of
// the password for a host or a database name, and repeat it in every
// connection error: postgres://u:p@ss@db/orders is user u, password p, host
// ss@db, as in libpq.

// Describe returns a loggable description of a database URL or DSN: user,
// hosts, ports and database, never the password.
func Describe(conn string) string {
	secrets, err := secrets(conn)
	if err != nil {
		return "(database URL not shown: " + err.Error() + ")"
	}
	cfg, err := pgconn.ParseConfig(conn)
	if err != nil {
		return "(unparsable database URL)"
	}
	// With TLS preferred pgx tries each host twice, with and without TLS:
	// each appears once.
	hosts := []string{hostPort(cfg.Host, cfg.Port)}
	for _, fb := range cfg.Fallbacks {
		if h := hostPort(fb.Host, fb.Port); h != hosts[len(hosts)-1] {
			hosts = append(hosts, h)
		}
	}
	where := strings.Join(hosts, ",") + "/" + cfg.Database
	// A password has no business in a host or database name, but one set
	// by PGPASSWORD or read from a passfile is not in conn to be checked.
	for _, s := range append(secrets, cfg.Password) {
		if s != "" && strings.Contains(where, s) {
			return "(database URL not shown: a host or database name contains the password)"
		}
	}
	return cfg.User + "@" + where
}

func hostPort(host string, port uint16) string {
	if strings.Contains(host, ":") { // an IPv6 address
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(port))
}

// CheckURL returns an error, which never quotes conn, if pgx would not read
// the password in conn where its writer put it: an unencoded '@' (or '/'
// before one) in a URL's password, or an unquoted space in a DSN's. The
// error says how to write it instead.
func CheckURL(conn string) error {
	_, err := secrets(conn)
	return err
}

var (
	errStrayAt = errors.New(`an '@' other than the one that ends user:password: percent-encode reserved characters in the password (@ as %40, / as %2F)`)
	errSplitKV = errors.New(`not keyword=value pairs: quote a value with spaces (password='a b'), escaping quotes and backslashes in it (\' and \\)`)
)

// secrets returns the passwords (password and sslpassword) written in a
// connection string, as written and decoded, or errStrayAt or errSplitKV
// when their extent is ambiguous. It reads conn the way pgx and libpq do:
// a URL's user information ends at its first '@' before any '/', and a
// DSN is keyword=value pairs separated by blanks.
func secrets(conn string) ([]string, error) {
	var out []string
	keep := func(key, raw, decoded string) {
		if key == "password" || key == "sslpassword" {
			out = append(out, raw, decoded)
		}
	}
	rest, isURL := strings.CutPrefix(conn, "postgresql://")
	if !isURL {
		rest, isURL = strings.CutPrefix(conn, "postgres://")
	}
	if !isURL {
		if err := splitKeywordValues(conn, keep); err != nil {
			return nil, err
		}
		return out, nil
	}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		if _, pw, ok := strings.Cut(rest[:i], ":"); ok {
			keep("password", pw, unescape(pw))
		}
		rest = rest[i+1:]
	}
	// Any other '@' may be the rest of a password.
	if strings.Contains(rest, "@") {
		return nil, errStrayAt
	}
	if _, query, ok := strings.Cut(rest, "?"); ok {
		for pair := range strings.SplitSeq(query, "&") {
			k, v, _ := strings.Cut(pair, "=")
			keep(unescape(k), v, unescape(v))
		}
	}
	return out, nil
}

// unescape percent-decodes s, or returns it as is if it is not valid.
func unescape(s string) string {
	if d, err := url.PathUnescape(s); err == nil {
		return strings.TrimSpace(d)
	}
	return s
}

// splitKeywordValues calls keep with each keyword and its value, as written
// and unquoted, of a DSN in libpq's syntax: blanks separate pairs and may
// surround '='; a value is a run of non-blanks or a single-quoted string,
// in either of which a backslash takes the next character literally.
func splitKeywordValues(dsn string, keep func(key, raw, value string)) error {
	const blanks = " \t\n\r\v\f"
	s := strings.TrimLeft(dsn, blanks)
	for s != "" {
		key, rest, ok := strings.Cut(s, "=")
		key = strings.Trim(key, blanks)
		if !ok || key == "" || strings.ContainsAny(key, blanks) {
			return errSplitKV
		}
		s = strings.TrimLeft(rest, blanks)
		quoted := strings.HasPrefix(s, "'")
		if quoted {
			s = s[1:]
		}
		var value strings.Builder
		end := 0
		for ; end < len(s); end++ {
			c := s[end]
			if (quoted && c == '\'') || (!quoted && strings.IndexByte(blanks, c) >= 0) {
				break
			}
			if c == '\\' && end+1 < len(s) {
				end++
				c = s[end]
			}
			value.WriteByte(c)
		}
		raw := s[:end]
		if quoted {
			if end == len(s) {
				return errSplitKV
			}
			end++ // the closing quote
		}
		keep(key, raw, value.String())
		s = strings.TrimLeft(s[end:], blanks)
	}
	return nil
}

// keywordPassword and urlPassword find what may be a password in an error
// that is not pgx's ParseConfigError, whose connection string is not known.
var (
	keywordPassword = regexp.MustCompile(`(?i)(password\s*=\s*)(?:'(?:\\.|[^'\\])*'?|\S*)`)
	urlPassword     = regexp.MustCompile(`(://[^:/@\s]*:)\S*@`)
)

// redactParseError returns the message of an error from parsing a
// connection string, without the connection string or any password.
func redactParseError(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		msg := keywordPassword.ReplaceAllString(err.Error(), "${1}xxxxx")
		return urlPassword.ReplaceAllString(msg, "${1}xxxxx@")
	}
	secrets, serr := secrets(pe.ConnString)
	if serr != nil {
		return serr.Error()
	}
	// pgx's message starts with the connection string, quoted with its
	// password masked by patterns that miss some spellings. Whoever wrote
	// the string knows it, so the message drops it: an error with no
	// message or cause gives exactly that prefix.
	msg := strings.Replace(err.Error(), pgconn.NewParseConfigError(pe.ConnString, "", nil).Error(), "", 1)
	if pe.ConnString != "" {
		msg = strings.ReplaceAll(msg, pe.ConnString, "(connection string)")
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}
