package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const deadUsage = `usage: outbox-relay dead list [--json]
       outbox-relay dead retry [--dry-run] <id>... | --all
       outbox-relay dead drop [--dry-run] <id>... | --all

A row the broker keeps rejecting (no route, a missing exchange, a body too
large) or that cannot become a message is retried with backoff and, after
RELAY_MAX_ATTEMPTS failed attempts, is dead: later rows of its aggregate wait
behind it; other aggregates flow on.

  list    the dead rows, with reason, attempts, age and how many rows wait
  retry   send them back for publishing: the leader tries them at once, in order
  drop    discard them: they are never published, the rows behind them go on

retry and drop name the database and table they act on, and log a line per
row (on stderr, in RELAY_LOG_FORMAT). With --dry-run they print the dead
rows they would act on, in the format of list, and change nothing. Ids that
are not dead rows of the table make the exit status 1, after the others
are acted on.

flags:
  --all      every dead row (retry, drop)
  --dry-run  print what would be acted on; change nothing (retry, drop)
  --json     print one JSON array (list)
`

func deadCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		fmt.Fprint(stderr, deadUsage)
		if len(args) == 0 {
			return &usageError{"dead: want list, retry or drop"}
		}
		return errHelp
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("dead "+sub, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON array (list)")
	all := fs.Bool("all", false, "every dead row (retry, drop)")
	dryRun := fs.Bool("dry-run", false, "print what would be acted on; change nothing (retry, drop)")
	fs.SetOutput(io.Discard)
	// Flags may come after the ids too (dead drop 12 --dry-run): the flag
	// package stops at the first id, so parsing goes on after each.
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				fmt.Fprint(stderr, deadUsage)
				return errHelp
			}
			return &usageError{fmt.Sprintf("dead %s: %v", sub, err)}
		}
		if fs.NArg() == 0 {
			break
		}
		operands, args = append(operands, fs.Arg(0)), fs.Args()[1:]
	}
	var ids []int64
	for _, a := range operands {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return &usageError{fmt.Sprintf("dead %s: %q is not a row id", sub, a)}
		}
		ids = append(ids, id)
	}
	switch sub {
	case "list":
		if len(ids) > 0 || *all || *dryRun {
			return &usageError{"dead list: takes no ids, --all or --dry-run"}
		}
	case "retry", "drop":
		if *asJSON || (len(ids) == 0) == !*all {
			return &usageError{fmt.Sprintf("dead %s: give row ids or --all", sub)}
		}
	default:
		return &usageError{fmt.Sprintf("dead: unknown subcommand %q (list, retry or drop)", sub)}
	}

	return withAdmin(ctx, func(ctx context.Context, e *env, admin *postgres.Admin) error {
		// The table as configured and the database without its password: an
		// operator with several outboxes sees which one was touched.
		where := fmt.Sprintf("table %s in %s", e.Table, postgres.Describe(e.DatabaseURL))
		if sub == "list" {
			return deadList(ctx, admin, *asJSON, where, e.DeadRows, stdout)
		}
		act, did, level, logMsg := admin.RetryDead, "sent back for publishing", slog.LevelInfo, "dead row sent back for publishing"
		if sub == "drop" {
			act, did, level, logMsg = admin.DropDead, "dropped", slog.LevelWarn, "dead row dropped: it will never be published"
		}
		if *dryRun {
			return deadDryRun(ctx, admin, *all, ids, where, did, e.DeadRows, stdout)
		}
		done, err := act(ctx, *all, ids)
		if err != nil {
			return fmt.Errorf("%s dead rows of %s: %w", sub, where, err)
		}
		log := newLogger(e, stderr)
		for _, id := range done {
			log.Log(ctx, level, logMsg, "table", e.Table, "id", id)
		}
		fmt.Fprintf(stdout, "%s of %s %s: %v\n", deadRows(len(done)), where, did, done)
		return missing(ids, done, where)
	})
}

// deadList prints the dead rows, with their effect under policy
// (RELAY_DEAD_ROWS), or one JSON array of them.
func deadList(ctx context.Context, admin *postgres.Admin, asJSON bool, where, policy string, stdout io.Writer) error {
	dead, err := admin.Dead(ctx)
	if err != nil {
		return fmt.Errorf("dead rows of %s: %w", where, err)
	}
	if asJSON {
		// encoding/json escapes control characters: the writers' text
		// cannot reach a terminal raw through this.
		if dead == nil {
			dead = []postgres.DeadRow{}
		}
		return json.NewEncoder(stdout).Encode(dead)
	}
	if len(dead) == 0 {
		fmt.Fprintf(stdout, "no dead rows in %s\n", where)
	}
	for _, d := range dead {
		printDead(stdout, d, policy)
	}
	return nil
}

// deadDryRun prints the dead rows (all, or those of ids) that retry or drop
// would act on, and changes nothing.
func deadDryRun(ctx context.Context, admin *postgres.Admin, all bool, ids []int64, where, did, policy string, stdout io.Writer) error {
	dead, err := admin.Dead(ctx)
	if err != nil {
		return fmt.Errorf("dead rows of %s: %w", where, err)
	}
	asked := map[int64]bool{}
	for _, id := range ids {
		asked[id] = true
	}
	var would []int64
	for _, d := range dead {
		if all || asked[d.ID] {
			printDead(stdout, d, policy)
			would = append(would, d.ID)
		}
	}
	fmt.Fprintf(stdout, "dry run: %s of %s would be %s: %v; nothing was changed\n", deadRows(len(would)), where, did, would)
	return missing(ids, would, where)
}

// deadRows says "1 dead row", "2 dead rows".
func deadRows(n int) string {
	if n == 1 {
		return "1 dead row"
	}
	return fmt.Sprintf("%d dead rows", n)
}

// printDead prints a dead row in two lines, its writers' text escaped,
// with what it does to its aggregate under policy (RELAY_DEAD_ROWS).
func printDead(w io.Writer, d postgres.DeadRow, policy string) {
	effect := fmt.Sprintf("blocks its aggregate: %d rows wait behind it", d.Waiting)
	if policy == string(relay.DeadRowsSkip) {
		effect = "skipped: its aggregate goes on without it (RELAY_DEAD_ROWS=skip)"
	}
	fmt.Fprintf(w, "%d  %s/%s  %s -> %s  attempts %d  dead for %s, %s\n    %s\n",
		d.ID, termField(d.AggregateType), termField(d.AggregateID), termField(d.EventType), termField(d.RoutingKey), d.Attempts,
		time.Duration(d.AgeSeconds*float64(time.Second)).Round(time.Second), effect, termText(d.Reason))
}

// missing reports ids that were asked for but are not dead rows.
func missing(asked, done []int64, where string) error {
	got := map[int64]bool{}
	for _, id := range done {
		got[id] = true
	}
	var miss []int64
	for _, id := range asked {
		if !got[id] {
			miss = append(miss, id)
		}
	}
	if len(miss) > 0 {
		return fmt.Errorf("not dead rows of %s: %v", where, miss)
	}
	return nil
}
