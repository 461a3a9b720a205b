package postgres

import (
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
)

// Describe returns a loggable description of a database URL or DSN: user,
// hosts and database, never the password.
func Describe(url string) string {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return "(unparsable database URL)"
	}
	s := cfg.User + "@" + cfg.Host
	if cfg.Port != 0 {
		s += ":" + strconv.Itoa(int(cfg.Port))
	}
	for _, fb := range cfg.Fallbacks {
		if fb.Host != cfg.Host || fb.Port != cfg.Port {
			s += "," + fb.Host + ":" + strconv.Itoa(int(fb.Port))
		}
	}
	return s + "/" + cfg.Database
}

var passwordPattern = regexp.MustCompile(`(?i)(password=|://[^:/@\s]*:)[^@\s]*`)

// redactParseError removes anything that looks like a password from a
// parse error, which pgx may build from the URL it could not parse.
func redactParseError(err error) string {
	return passwordPattern.ReplaceAllString(err.Error(), "${1}xxxxx")
}
