package bench

import (
	"fmt"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

// relayLogicalRun is relayRun with the logical source (RELAY_SOURCE=logical).
func relayLogicalRun(queueType string, cpu *cpuMeter) run {
	return run{fmt.Sprintf("relay-%s-1ch-logical", queueType), func(t *testing.T) result {
		return relayDrainFrom(t, newRig(t, queueType), backlogRows, 1, false, postgres.SourceLogical, cpu)
	}}
}

// measureLogical: the drain of measurements 1 to 3 with the logical
// source, beside the raw publisher and the poll source in the same rounds,
// on a classic and (where the broker has them) a quorum queue, with the
// CPU each source costs the servers per 100k rows. Commit-to-delivery
// latency with the logical source is in the latency measurement.
func measureLogical(t *testing.T, s *suite) {
	queues := []string{classic}
	if s.quorumOK(t) {
		queues = append(queues, quorum)
	}
	for _, q := range queues {
		rs := interleave(t, s.mode.rounds, rawRun(q, 1, s.cpu), relayRun(q, 1, s.cpu), relayLogicalRun(q, s.cpu))
		s.add(row{what: fmt.Sprintf("logical source: raw publisher, %s queue, 1 channel, window 1000 (same rounds)", q),
			figure: perSecond(rs.median(0), "msgs/s"), ratio: "1 (base)"})
		s.add(row{what: fmt.Sprintf("logical source: relay (poll source) drains a 100k backlog, %s queue (same rounds)", q),
			figure: perSecond(rs.median(1), "rows/s"), ratio: rs.ratioText(1, 0, "raw")})
		s.add(row{what: fmt.Sprintf("logical source: relay (RELAY_SOURCE=logical) drains a 100k backlog from its slot, %s queue", q),
			figure: perSecond(rs.median(2), "rows/s"), ratio: rs.ratioText(2, 0, "raw") + "; " + rs.ratioText(2, 1, "poll"),
			goal: "≥ 0.95 × raw", met: yesNo(rs.ratio(2, 0) >= 0.95)})
		poll, logical := rs.cpu(1), rs.cpu(2)
		s.add(row{what: fmt.Sprintf("logical source: CPU seconds per 100k rows, %s queue, poll against logical", q),
			figure: "poll: " + s.cpu.describe(poll, backlogRows, "relay") + "; logical: " + s.cpu.describe(logical, backlogRows, "relay"),
			ratio:  ratio(logical.postgres, poll.postgres) + " poll (PostgreSQL)"})
	}
}
