package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const statusUsage = `usage: outbox-relay status [--json]

Prints the outbox's state: pending rows (committed, not yet published), dead
rows, the age of the oldest pending row, the recorded position, and the
oldest running transaction (which holds the recorded position back while
it runs, and publishing too in a table shared with RELAY_PARTITIONS).
`

type statusReport struct {
	postgres.Status
	Replica string `json:"replica"` // the replica running this command
}

func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseFlags(fs, args, statusUsage, stderr); err != nil {
		return err
	}
	return withAdmin(ctx, func(ctx context.Context, e *env, admin *postgres.Admin) error {
		st, err := admin.Status(ctx)
		if err != nil {
			return fmt.Errorf("status of %s: %w", postgres.Describe(e.DatabaseURL), err)
		}
		host := e.ReplicaName
		if host == "" {
			host, _ = os.Hostname()
		}
		rep := statusReport{Status: st, Replica: host}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			return enc.Encode(rep)
		}
		printStatus(stdout, st, e.DeadRows)
		return nil
	})
}

// printStatus prints st in aligned lines, the dead rows' effect on their
// aggregates under policy (RELAY_DEAD_ROWS).
func printStatus(stdout io.Writer, st postgres.Status, policy string) {
	fmt.Fprintf(stdout, "table                 %s\n", st.Table)
	fmt.Fprintf(stdout, "pending               %d\n", st.Pending)
	fmt.Fprintf(stdout, "dead                  %d", st.Dead)
	switch {
	case st.Dead == 0:
	case policy == string(relay.DeadRowsSkip):
		fmt.Fprintf(stdout, " in %d aggregates, which go on without them (RELAY_DEAD_ROWS=skip)", st.DeadAggregates)
	default:
		fmt.Fprintf(stdout, " in %d aggregates, whose later rows wait (outbox-relay dead list)", st.DeadAggregates)
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "parked                %d\n", st.Parked)
	fmt.Fprintf(stdout, "oldest pending age    %.1fs\n", st.OldestPendingAgeSeconds)
	switch {
	case st.PartitionCount > 1:
		printPartitions(stdout, st)
	case st.Leader == "":
		fmt.Fprintf(stdout, "leader                none\n")
	case st.LeaseRemainingSeconds < 0:
		fmt.Fprintf(stdout, "leader                %s (lease lapsed %.1fs ago; a standby may take over)\n", st.Leader, -st.LeaseRemainingSeconds)
	default:
		fmt.Fprintf(stdout, "leader                %s (lease %.1fs left, epoch %d): %s\n", st.Leader, st.LeaseRemainingSeconds, st.Epoch, st.LeaderState)
	}
	fmt.Fprintf(stdout, "position              %s", st.Position)
	if !st.PositionUpdatedAt.IsZero() {
		fmt.Fprintf(stdout, " (moved %s ago)", time.Since(st.PositionUpdatedAt).Round(time.Second))
	}
	fmt.Fprintln(stdout)
	if st.OpenTransactions > 0 {
		fmt.Fprintf(stdout, "read past             %d running transaction(s), up to %s; the position waits at the oldest\n", st.OpenTransactions, st.ReadCursor)
	}
	if x := st.OldestXact; x != nil && x.Prepared {
		fmt.Fprintf(stdout, "oldest transaction    prepared in %q, %.1fs ago (COMMIT PREPARED or ROLLBACK PREPARED it)\n", x.Database, x.AgeSeconds)
	} else if x != nil {
		fmt.Fprintf(stdout, "oldest transaction    pid %d in %q, running %.1fs\n", x.PID, x.Database, x.AgeSeconds)
	}
	switch sl := st.Slot; {
	case sl == nil:
	case !sl.Exists:
		fmt.Fprintf(stdout, "slot                  %s does not exist (outbox-relay migrate with RELAY_SOURCE=logical creates it)\n", sl.Name)
	default:
		reader := "no reader"
		if sl.Active {
			reader = "read"
		}
		fmt.Fprintf(stdout, "slot                  %s, %s, confirmed %s, retains %d bytes of WAL (%s)\n", sl.Name, reader, sl.ConfirmedLSN, sl.RetainedWALBytes, sl.WALStatus)
	}
}

// printPartitions describes a table whose work replicas share: who holds
// each partition, and how far it lags.
func printPartitions(stdout io.Writer, st postgres.Status) {
	held := map[string]int{}
	for _, p := range st.Partitions {
		if p.Holder != "" && p.LeaseRemainingSeconds > 0 {
			held[p.Holder]++
		}
	}
	names := slices.Sorted(maps.Keys(held))
	shares := make([]string, len(names))
	for i, n := range names {
		shares[i] = fmt.Sprintf("%s %d", n, held[n])
	}
	fmt.Fprintf(stdout, "partitions            %d, held by %d replicas (%s)\n", st.PartitionCount, len(names), strings.Join(shares, ", "))
	for _, p := range st.Partitions {
		holder := "none"
		switch {
		case p.Holder == "":
		case p.LeaseRemainingSeconds < 0:
			holder = fmt.Sprintf("%s (lease lapsed %.1fs ago)", p.Holder, -p.LeaseRemainingSeconds)
		default:
			holder = fmt.Sprintf("%s (lease %.1fs left, epoch %d)", p.Holder, p.LeaseRemainingSeconds, p.Epoch)
		}
		fmt.Fprintf(stdout, "  partition %-4d      %s; pending %d, oldest %.1fs; position %s\n", p.Partition, holder, p.Pending, p.OldestPendingAgeSeconds, p.Position)
	}
}
