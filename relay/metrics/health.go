package metrics

import (
	"fmt"
	"time"
)

// Healthy returns nil while the relay's loop is turning: it has turned
// within stuck. A loop that stops turning is stuck in a way only a restart
// fixes; a server that is down is not that (the loop keeps retrying).
func (m *Metrics) Healthy(now time.Time, stuck time.Duration) error {
	last := time.Unix(0, m.lastAlive.Load())
	if idle := now.Sub(last); idle > stuck {
		return fmt.Errorf("the relay loop has not turned for %s", idle.Round(time.Second))
	}
	return nil
}

// Ready returns why this replica is not ready, or nil when it is: the
// outbox's state was read from the database at the last sample and, if it
// leads, it has a connection to the broker, the broker does not block
// publishers, and it recorded rows within stalled whenever rows were
// pending. A standby is ready when it can read the database: it is ready to
// take over.
func (m *Metrics) Ready(now time.Time, stalled time.Duration) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var why []string
	switch {
	case !m.sampled:
		why = append(why, "starting: the outbox has not been read yet")
	case !m.dbUp:
		why = append(why, "the database cannot be read")
	}
	if !m.leading {
		return why
	}
	if !m.brokerUp() {
		why = append(why, "no connection to the broker")
	}
	if m.isBlocked {
		why = append(why, "the broker blocks publishers (resource alarm)")
	}
	if idle := now.Sub(m.lastProgress); m.sample.Pending > 0 && idle > stalled {
		reason := fmt.Sprintf("stalled: %d rows pending, none published for %s", m.sample.Pending, idle.Round(time.Second))
		if m.sample.HoldupAgeSeconds > 0 {
			reason += fmt.Sprintf(" (a transaction open for %.0fs holds them back)", m.sample.HoldupAgeSeconds)
		}
		why = append(why, reason)
	}
	return why
}
