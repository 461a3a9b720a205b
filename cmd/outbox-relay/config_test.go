package main

import (
	"strings"
	"testing"
)

func TestBadConfigurationExitsTwoNamingTheVariable(t *testing.T) {
	t.Parallel()
	base := []string{"RELAY_DATABASE_URL=postgres://relay:pg-s3cret@127.0.0.1:1/db", "RELAY_AMQP_URL=amqp://relay:mq-s3cret@127.0.0.1:1/"}
	cases := []struct {
		name, variable string
		env            []string
		args           []string
	}{
		{"missing database", "RELAY_DATABASE_URL", []string{"RELAY_AMQP_URL=amqp://x/"}, nil},
		{"missing broker", "RELAY_AMQP_URL", []string{base[0]}, nil},
		{"broker not amqp", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=http://relay:mq-s3cret@host/"}, nil},
		{"broker bad port", "RELAY_AMQP_URL", []string{base[0], "RELAY_AMQP_URL=amqp://relay:mq-s3cret@host:port/"}, nil},
		{"database unparsable", "RELAY_DATABASE_URL", []string{"RELAY_DATABASE_URL=postgres://relay:pg-s3cret@host:port/db", base[1]}, nil},
		{"batch zero", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=0"), nil},
		{"channels zero", "RELAY_CHANNELS", append(base, "RELAY_CHANNELS=0"), nil},
		{"channels many", "RELAY_CHANNELS", append(base, "RELAY_CHANNELS=17"), nil},
		{"batch huge", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=1000000"), nil},
		{"batch text", "RELAY_BATCH_SIZE", append(base, "RELAY_BATCH_SIZE=many"), nil},
		{"poll text", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=soon"), nil},
		{"poll negative", "RELAY_POLL_INTERVAL", append(base, "RELAY_POLL_INTERVAL=-1s"), nil},
		{"shutdown zero", "RELAY_SHUTDOWN_TIMEOUT", append(base, "RELAY_SHUTDOWN_TIMEOUT=0s"), nil},
		{"attempts zero", "RELAY_MAX_ATTEMPTS", append(base, "RELAY_MAX_ATTEMPTS=0"), nil},
		{"lease zero", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=0s"), nil},
		{"lease tiny", "RELAY_LEASE_TIMEOUT", append(base, "RELAY_LEASE_TIMEOUT=10ms"), nil},
		{"retention negative", "RELAY_RETENTION", append(base, "RELAY_RETENTION=-1h"), nil},
		{"log level", "RELAY_LOG_LEVEL", append(base, "RELAY_LOG_LEVEL=loud"), nil},
		{"log format", "RELAY_LOG_FORMAT", append(base, "RELAY_LOG_FORMAT=xml"), nil},
		{"table injection", "RELAY_TABLE", append(base, "RELAY_TABLE=outbox; DROP TABLE users"), nil},
		{"table quoted", "RELAY_TABLE", append(base, `RELAY_TABLE="outbox"`), nil},
		{"table three parts", "RELAY_TABLE", append(base, "RELAY_TABLE=a.b.c"), nil},
		{"status bad table", "RELAY_TABLE", append(base, "RELAY_TABLE=x'y"), []string{"status"}},
		{"migrate other name", "RELAY_TABLE", append(base, "RELAY_TABLE=events"), []string{"migrate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, out := runCmd(t, c.env, c.args...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], c.variable) {
				t.Fatalf("exit %d, output %q; want exit 2 and one line naming %s", code, out, c.variable)
			}
			if strings.Contains(out, "s3cret") {
				t.Fatalf("output shows a password: %q", out)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"frobnicate"}, {"status", "--yaml"}, {"run", "extra"}} {
		if code, out := runCmd(t, nil, args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, out)
		}
	}
	code, out := runCmd(t, nil, "help")
	if code != 0 {
		t.Fatalf("help: exit %d", code)
	}
	// Every variable the relay reads is documented in help.
	for _, v := range []string{"DATABASE_URL", "AMQP_URL", "TABLE", "EXCHANGE", "CHANNELS", "BATCH_SIZE", "POLL_INTERVAL", "MAX_ATTEMPTS",
		"LEASE_TIMEOUT", "REPLICA_NAME", "RETENTION", "HTTP_ADDR", "LOG_LEVEL", "LOG_FORMAT", "SHUTDOWN_TIMEOUT"} {
		if !strings.Contains(out, "RELAY_"+v) {
			t.Errorf("help does not mention RELAY_%s", v)
		}
	}
	for _, args := range [][]string{{"run", "-h"}, {"migrate", "-h"}, {"status", "-h"}, {"version"}} {
		if code, out := runCmd(t, nil, args...); code != 0 || out == "" {
			t.Errorf("%v: exit %d, output %q", args, code, out)
		}
	}
}
