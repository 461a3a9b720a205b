package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
	"github.com/outboxrelay/outboxrelay/relay/replay"
)

const replayUsage = `usage: outbox-relay replay [selection] [--to-queue NAME] [--dry-run]
       outbox-relay replay --all [--to-queue NAME] [--dry-run]

Publishes rows again that the relay already published, to recover a
consumer that lost messages: in their original order, with their original
message_id, properties and headers, plus the header outbox_replay = true.
Selection flags combine with AND; at least one is required, or --all.

Only rows at or before the recorded position (published) are replayed. Rows
after it are pending and the relay publishes them anyway; parked and dead
rows were never published: neither is replayed, both are counted. Rows that
retention (RELAY_RETENTION) deleted cannot be replayed: a selection that
reaches them is reported, and if nothing at all could be sent the exit
status is 1. A row that cannot become a message (headers that cannot
become AMQP headers, say, edited after it was published) is skipped with a
warning naming it, and the rest goes out in order; the summary counts and
names the skipped rows. Skipped rows alone leave the exit status 0, as no
rerun could send them: look for the warnings.

Replay takes no lease and may run while the relay runs: replayed messages
interleave with live ones, so consumers must deduplicate on message_id.

flags:
`

type replayFlags struct {
	sel     postgres.ReplaySelection
	all     bool
	dryRun  bool
	toQueue string
}

func parseReplayFlags(args []string, stderr io.Writer) (replayFlags, error) {
	var f replayFlags
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.Int64Var(&f.sel.FromID, "from-id", 0, "rows with id at least this")
	fs.Int64Var(&f.sel.ToID, "to-id", 0, "rows with id at most this")
	since := fs.String("since", "", "rows created at or after this time (RFC 3339, e.g. 2026-11-19T10:00:00Z)")
	until := fs.String("until", "", "rows created before this time (RFC 3339)")
	fs.StringVar(&f.sel.AggregateType, "aggregate-type", "", "rows of this aggregate_type")
	fs.StringVar(&f.sel.AggregateID, "aggregate-id", "", "rows of this aggregate_id (needs --aggregate-type)")
	fs.StringVar(&f.sel.EventType, "event-type", "", "rows of this event_type")
	fs.BoolVar(&f.all, "all", false, "every published row still in the outbox")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print what would be sent, one line per row; connect to no broker")
	fs.StringVar(&f.toQueue, "to-queue", "", "send every message to this queue (the default exchange, routing key NAME) instead of its own exchange and routing key")
	if err := parseFlags(fs, args, replayUsage, stderr); err != nil {
		return f, err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	bad := func(format string, a ...any) error { return &usageError{"replay: " + fmt.Sprintf(format, a...)} }

	if (set["from-id"] && f.sel.FromID < 1) || (set["to-id"] && f.sel.ToID < 1) {
		return f, bad("--from-id and --to-id take row ids (at least 1)")
	}
	var err error
	if *since != "" {
		if f.sel.Since, err = time.Parse(time.RFC3339, *since); err != nil {
			return f, bad("--since %q is not an RFC 3339 time (e.g. 2026-11-19T10:00:00Z)", *since)
		}
	}
	if *until != "" {
		if f.sel.Until, err = time.Parse(time.RFC3339, *until); err != nil {
			return f, bad("--until %q is not an RFC 3339 time (e.g. 2026-11-19T10:00:00Z)", *until)
		}
	}
	selectors := 0
	for _, name := range []string{"from-id", "to-id", "since", "until", "aggregate-type", "aggregate-id", "event-type"} {
		if set[name] {
			selectors++
		}
	}
	for _, name := range []string{"aggregate-type", "aggregate-id", "event-type", "to-queue"} {
		if set[name] && fs.Lookup(name).Value.String() == "" {
			return f, bad("--%s needs a value", name)
		}
	}
	switch {
	case selectors == 0 && !f.all:
		return f, bad("choose rows with --from-id, --to-id, --since, --until, --aggregate-type, --aggregate-id or --event-type, or replay every published row with --all")
	case selectors > 0 && f.all:
		return f, bad("--all replays every published row: it takes no other selection")
	case f.sel.AggregateID != "" && f.sel.AggregateType == "":
		return f, bad("--aggregate-id needs --aggregate-type (aggregate ids are unique per type)")
	case f.sel.ToID != 0 && f.sel.FromID > f.sel.ToID:
		return f, bad("--from-id %d is after --to-id %d", f.sel.FromID, f.sel.ToID)
	case !f.sel.Until.IsZero() && !f.sel.Since.Before(f.sel.Until) && !f.sel.Since.IsZero():
		return f, bad("--since %s is not before --until %s", *since, *until)
	}
	return f, nil
}

func replayCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseReplayFlags(args, stderr)
	if err != nil {
		return err
	}
	e, admin, err := openAdmin()
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := e.relayConfig(); err != nil {
		return err // RELAY_BATCH_SIZE sizes the pages
	}
	cfg := replay.Config{BatchSize: e.BatchSize, Exchange: e.Exchange, ToQueue: f.toQueue,
		OnSkip: func(row *relay.Row, err error) {
			fmt.Fprintf(stderr, "outbox-relay replay: warning: row %d skipped: %s\n", row.ID, termText(err.Error()))
		},
		OnDryRun: func(row *relay.Row, m relay.Message) {
			fmt.Fprintf(stdout, "%d  txid %d  %s/%s  %s  exchange %q  routing key %q  message_id %s\n",
				row.ID, row.TxID, termField(row.AggregateType), termField(row.AggregateID), termField(row.EventType),
				m.Exchange, m.RoutingKey, termField(m.MessageID))
		}}
	if !f.dryRun {
		bcfg, err := e.brokerConfig()
		if err != nil {
			return err
		}
		bcfg.Name = "outbox-relay replay"
		bcfg.Window = e.BatchSize
		bcfg.Logger = newLogger(e, stderr)
		broker, err := rabbitmq.New(bcfg)
		if err != nil {
			return fmt.Errorf("open broker: %w", err)
		}
		defer broker.Close()
		cfg.Publisher = broker
	}

	plan, err := admin.PlanReplay(ctx, f.sel)
	if err != nil {
		return fmt.Errorf("replay from %s: %w", postgres.Describe(e.DatabaseURL), err)
	}
	cfg.Rows = func(ctx context.Context, after relay.Position, limit int) ([]relay.Row, error) {
		return admin.ReplayRows(ctx, plan, f.sel, after, limit)
	}
	res, sendErr := replay.Run(ctx, cfg)
	replayReport(stdout, stderr, plan, res, f.dryRun)
	switch {
	case sendErr != nil:
		return sendErr
	case res.Sent == 0 && plan.Pruned:
		return errors.New("nothing replayed: the selected rows that were published have been deleted by retention")
	}
	return nil
}

// replayReport prints the summary and what the selection holds that was not
// replayed, and why.
func replayReport(stdout, stderr io.Writer, p postgres.ReplayPlan, res replay.Result, dryRun bool) {
	switch {
	case dryRun:
		fmt.Fprintf(stdout, "dry run: %s would be replayed from %s (published up to position %s); nothing was sent\n", rowCount(res.Sent), p.Table, p.Position)
	default:
		fmt.Fprintf(stdout, "replayed %s from %s (published up to position %s)\n", rowCount(res.Sent), p.Table, p.Position)
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(stdout, "%s of the selection skipped: cannot become messages, so not replayed (%s; the warnings say why)\n",
			rowCount(len(res.Skipped)), idList(res.Skipped))
	}
	if !p.Started {
		fmt.Fprintf(stdout, "the relay has not started on %s yet: nothing is published\n", p.Table)
	}
	if p.Pending > 0 {
		fmt.Fprintf(stdout, "%s of the selection not published yet: not replayed; the relay publishes them\n", rowCount(p.Pending))
	}
	if p.Parked > 0 {
		fmt.Fprintf(stdout, "%s of the selection parked (%d of them dead): never published, so not replayed (see outbox-relay dead list)\n",
			rowCount(p.Parked), p.Dead)
	}
	if p.Pruned {
		fmt.Fprintf(stderr, "outbox-relay replay: warning: published rows created up to %s (ids up to %d) were deleted by retention (RELAY_RETENTION): those the selection asks for are not replayed\n",
			p.PrunedUntil.UTC().Format(time.RFC3339), p.PrunedID)
	}
}

// maxListedIDs bounds the ids a summary line lists; the warnings name
// every one.
const maxListedIDs = 20

// idList says "id 7" or "ids 7, 9, 12", and "and 3 more" past
// maxListedIDs.
func idList(ids []int64) string {
	var b strings.Builder
	b.WriteString("id")
	if len(ids) > 1 {
		b.WriteString("s")
	}
	for i, id := range ids[:min(len(ids), maxListedIDs)] {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %d", id)
	}
	if len(ids) > maxListedIDs {
		fmt.Fprintf(&b, " and %d more", len(ids)-maxListedIDs)
	}
	return b.String()
}

// rowCount says "1 row", "2 rows".
func rowCount[N int | int64](n N) string {
	if n == 1 {
		return "1 row"
	}
	return fmt.Sprintf("%d rows", n)
}
