package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const deadUsage = `usage: outbox-relay dead list [--json]
       outbox-relay dead retry <id>... | --all
       outbox-relay dead drop <id>... | --all

A row the broker keeps rejecting (no route, a missing exchange, a body too
large) or that cannot become a message is retried with backoff and, after
RELAY_MAX_ATTEMPTS failed attempts, is dead: later rows of its aggregate wait
behind it; other aggregates flow on.

  list    the dead rows, with reason, attempts, age and how many rows wait
  retry   send them back for publishing: the leader tries them at once, in order
  drop    discard them: they are never published, the rows behind them go on
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
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stderr, deadUsage)
			return errHelp
		}
		return &usageError{fmt.Sprintf("dead %s: %v", sub, err)}
	}
	var ids []int64
	for _, a := range fs.Args() {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return &usageError{fmt.Sprintf("dead %s: %q is not a row id", sub, a)}
		}
		ids = append(ids, id)
	}
	switch sub {
	case "list":
		if len(ids) > 0 || *all {
			return &usageError{"dead list: takes no ids"}
		}
	case "retry", "drop":
		if *asJSON || (len(ids) == 0) == !*all {
			return &usageError{fmt.Sprintf("dead %s: give row ids or --all", sub)}
		}
	default:
		return &usageError{fmt.Sprintf("dead: unknown subcommand %q (list, retry or drop)", sub)}
	}

	e, store, err := openStore()
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	switch sub {
	case "list":
		dead, err := store.Dead(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			if dead == nil {
				dead = []postgres.DeadRow{}
			}
			return json.NewEncoder(stdout).Encode(dead)
		}
		if len(dead) == 0 {
			fmt.Fprintln(stdout, "no dead rows")
		}
		for _, d := range dead {
			fmt.Fprintf(stdout, "%d  %s/%s  %s -> %s  attempts %d  dead for %s, %d waiting behind it\n    %s\n",
				d.ID, d.AggregateType, d.AggregateID, d.EventType, d.RoutingKey, d.Attempts,
				time.Duration(d.AgeSeconds*float64(time.Second)).Round(time.Second), d.Waiting, d.Reason)
		}
		return nil
	case "retry":
		done, err := store.RetryDead(ctx, *all, ids)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d dead rows sent back for publishing: %v\n", len(done), done)
		return missing(ids, done)
	default:
		done, err := store.DropDead(ctx, *all, ids)
		if err != nil {
			return err
		}
		log := newLogger(e, stderr)
		for _, id := range done {
			log.Warn("dead row dropped: it will never be published", "id", id)
		}
		fmt.Fprintf(stdout, "%d dead rows dropped: %v\n", len(done), done)
		return missing(ids, done)
	}
}

// missing reports ids that were asked for but are not dead rows.
func missing(asked, done []int64) error {
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
		return fmt.Errorf("not dead rows of this table: %v", miss)
	}
	return nil
}
