package main

import (
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/outboxrelay/outboxrelay/relay/metrics"
)

// stalledAfter is how long a leader with pending rows may record none
// before /readyz reports it stalled: long enough to ride out a broker
// restart or a reconnection, short enough to show up in a rollout.
const stalledAfter = time.Minute

// stuckAfter is how long the relay loop may go without turning before
// /healthz fails. The loop's longest legitimate waits are a database call
// (30 s at most), a backoff (10 s), a lease renewal period and a poll
// interval; this is well above all of them.
func stuckAfter(e *env) time.Duration {
	return max(2*time.Minute, e.LeaseTimeout, 2*e.PollInterval)
}

// probeHandler serves /healthz, /readyz and /metrics.
//
// /healthz fails only when the relay loop is stuck, which a restart fixes.
// /readyz fails while the database cannot be read, and for the leader
// while it has no broker connection, the broker blocks publishers, or rows
// are pending and none was published for a minute. A restart fixes none of
// those, so they do not fail /healthz. As a sidecar, do not make /readyz
// the pod's readiness probe: a broker outage would take the service out of
// traffic while its writes to the outbox are safe.
func probeHandler(m *metrics.Metrics, stuck time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := m.Healthy(time.Now(), stuck); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := m.Ready(time.Now(), stalledAfter); len(why) > 0 {
			http.Error(w, "not ready: "+strings.Join(why, "; "), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", m.Handler())
	return mux
}
