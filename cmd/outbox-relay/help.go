package main

import (
	"fmt"
	"io"
	"reflect"
	"runtime/debug"
	"text/tabwriter"

	"github.com/outboxrelay/outboxrelay/internal/gcpercent"
)

const helpText = `outbox-relay publishes committed rows of a PostgreSQL outbox table to
RabbitMQ: each row once in normal operation, in commit order per aggregate,
never losing one.

usage: outbox-relay [command]

commands:
  run        publish until SIGTERM/SIGINT (the default command)
  migrate    apply the embedded schema.sql (idempotent); with RELAY_SOURCE=logical, also the publication and slot;
             with RELAY_PARTITIONS set, also the table's number of partitions (every replica stopped)
  status     pending and dead rows, oldest pending age, leader, position; --json for one JSON object
  dead       list, retry or drop rows the broker kept rejecting
  replay     publish already-published rows again (by id, time, aggregate or event type)
  health     exit 0 if the relay on this host answers /healthz (for container health checks)
  help       this text
  version    the version

Each command takes -h. Exit codes: 0 clean stop, 2 bad configuration or
usage, a database not set up for RELAY_SOURCE, or a table published in
another number of partitions than RELAY_PARTITIONS; 1 any other fatal error. While a server is unreachable the relay does
not exit: it retries with capped, jittered backoff and says so in its log.

configuration (environment only):
`

func printHelp(w io.Writer) {
	fmt.Fprint(w, helpText)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	t := reflect.TypeFor[env]()
	for i := range t.NumField() {
		f := t.Field(i)
		def, ok := f.Tag.Lookup("default")
		switch {
		case !ok:
			def = "(none)"
		case def == "":
			def = `""`
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", varName(f), def, f.Tag.Get("desc"))
	}
	fmt.Fprintf(tw, "  GOGC\t%d\t%s\n", gcpercent.Default, "Go's garbage-collection target. The relay collects less often than Go's default of 100: less CPU per message, 10 to 18 MB more memory. GOGC=100 trades the CPU back for the memory.")
	tw.Flush()
}

// version is the module version stamped by the Go toolchain, or the VCS
// revision for a build from a checkout.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
