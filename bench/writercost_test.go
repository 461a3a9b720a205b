package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// writerVariants are the variants of scripts/writer-cost/run.sh that
// measurement 7 runs: A a plain table (nothing the relay adds), B
// schema.sql's outbox, L B with the ordering lock taken first, C B plus
// the NOTIFY trigger, S B read by a logical replication slot (the server
// then runs with wal_level = logical for every variant).
var writerVariants = []string{"A", "B", "L", "C", "S"}

// measureWriterCost: measurement 7, what the relay's schema costs the
// transactions that write to the outbox. It runs scripts/writer-cost/run.sh
// (pgbench, 16 clients, each transaction upserts a business row and inserts
// one outbox row, on a throwaway PostgreSQL of its own with default
// durability; variants interleaved round by round) and reads the medians
// from its table.
func measureWriterCost(t *testing.T, s *suite) {
	cmd := exec.Command("bash", "../scripts/writer-cost/run.sh")
	cmd.Env = append(os.Environ(),
		"DURATION="+strconv.Itoa(s.mode.writerSeconds),
		"ROUNDS="+strconv.Itoa(s.mode.writerRounds),
		"VARIANTS="+strings.Join(writerVariants, " "))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr // its progress lines
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/writer-cost/run.sh: %v\n%s", err, out.String())
	}
	tps, err := parseWriterCost(out.String())
	if err != nil {
		t.Fatalf("%v in the output of scripts/writer-cost/run.sh:\n%s", err, out.String())
	}
	a, b, l, c, sl := tps["A"], tps["B"], tps["L"], tps["C"], tps["S"]
	s.add(row{what: "writers, plain table (keyed by id, no txid column, no CHECK), 16 pgbench clients, server at wal_level = logical",
		figure: perSecond(a, "tps"), ratio: "1 (base)"})
	s.add(row{what: "writers, schema.sql's outbox",
		figure: perSecond(b, "tps"), ratio: ratio(b, a) + " plain", goal: "≥ 0.95 × plain", met: atLeast(b, a, 0.95)})
	s.add(row{what: "writers, schema.sql's outbox with the ordering lock first (outbox_lock)",
		figure: perSecond(l, "tps"), ratio: ratio(l, a) + " plain, " + ratio(l, b) + " without the lock"})
	s.add(row{what: "writers, schema.sql's outbox + NOTIFY trigger (for reference)",
		figure: perSecond(c, "tps"), ratio: ratio(c, a) + " plain"})
	s.add(row{what: "writers, schema.sql's outbox read by a logical slot as RELAY_SOURCE=logical reads it (pg_recvlogical, pgoutput)",
		figure: perSecond(sl, "tps"), ratio: ratio(sl, a) + " plain, " + ratio(sl, b) + " without the slot",
		goal: "≥ 0.98 × plain", met: atLeast(sl, a, 0.98)})
}

// parseWriterCost reads the median tps of every variant from run.sh's
// markdown table: | variant | median tps | min | max | ... |.
func parseWriterCost(out string) (map[string]float64, error) {
	tps := map[string]float64{}
	for line := range strings.Lines(out) {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) < 2 {
			continue
		}
		v := strings.TrimSpace(cells[0])
		x, err := strconv.ParseFloat(strings.TrimSpace(cells[1]), 64)
		if err != nil {
			continue // the header and the separator
		}
		tps[v] = x
	}
	for _, v := range writerVariants {
		if tps[v] <= 0 {
			return nil, fmt.Errorf("no median tps for variant %s", v)
		}
	}
	return tps, nil
}
