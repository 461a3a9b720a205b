package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// scrape returns the text exposition of m.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestExportsEveryMetric(t *testing.T) {
	m := New(func() bool { return true })
	m.Leading(true)
	m.Sent(3)
	m.Confirmed(3, 4*time.Millisecond)
	m.Failed(relay.FailureRejected)
	m.Failed(relay.FailureRejected)
	m.Blocked(true)
	m.Observe(&Sample{Pending: 7, Parked: 2, Dead: 1, OldestPendingAgeSeconds: 12.5, HoldupAgeSeconds: 30, SlotRetainedWALBytes: 4096})
	m.RetentionDeleted(1000)
	m.Share(func() (int, int64) { return 4, 3 })
	text := scrape(t, m)
	for _, want := range []string{
		"outbox_relay_rows_published_total 3",
		`outbox_relay_publish_failures_total{reason="rejected"} 2`,
		`outbox_relay_publish_failures_total{reason="database"} 0`,
		"outbox_relay_confirm_latency_seconds_count 1",
		"outbox_relay_batch_size_sum 3",
		"outbox_relay_leader 1",
		"outbox_relay_broker_blocked 1",
		"outbox_relay_broker_up 1",
		"outbox_relay_database_up 1",
		"outbox_relay_pending_rows 7",
		"outbox_relay_oldest_pending_age_seconds 12.5",
		"outbox_relay_parked_rows 2",
		"outbox_relay_dead_rows 1",
		"outbox_relay_holdup_age_seconds 30",
		"outbox_relay_slot_retained_wal_bytes 4096",
		"outbox_relay_retention_deleted_rows_total 1000",
		"outbox_relay_partitions_held 4",
		"outbox_relay_partition_takes_total 3",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want+"\n") && !strings.Contains(text, want+" ") {
			t.Errorf("metrics lack %q", want)
		}
	}
	m.Observe(nil)
	if text := scrape(t, m); !strings.Contains(text, "outbox_relay_database_up 0\n") {
		t.Error("a failed sample does not set database_up to 0")
	}
}

// TestPartitionMetrics: each partition's holder, pending rows and lag, and
// no stale holder once a partition changed hands.
func TestPartitionMetrics(t *testing.T) {
	m := New(nil)
	m.Observe(&Sample{Partitions: []PartitionSample{{Partition: 0, Holder: "r1", Pending: 5, OldestPendingAgeSeconds: 2}, {Partition: 1}}})
	m.Observe(&Sample{Partitions: []PartitionSample{{Partition: 0, Holder: "r2", Pending: 3, OldestPendingAgeSeconds: 1}, {Partition: 1}}})
	text := scrape(t, m)
	for _, want := range []string{
		`outbox_relay_partition_held{holder="r2",partition="0"} 1`,
		`outbox_relay_partition_held{holder="",partition="1"} 0`,
		`outbox_relay_partition_pending_rows{partition="0"} 3`,
		`outbox_relay_partition_oldest_pending_age_seconds{partition="0"} 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(text, `holder="r1"`) {
		t.Error("partition 0's old holder r1 is still exported")
	}
}

func TestReadiness(t *testing.T) {
	var brokerUp atomic.Bool
	m := New(brokerUp.Load)
	now := time.Now()
	const stalled = time.Minute
	ready := func(at time.Time) string { return strings.Join(m.Ready(at, stalled), "; ") }

	if got := ready(now); !strings.Contains(got, "starting") {
		t.Fatalf("before the first sample: %q, want starting", got)
	}
	m.Observe(&Sample{})
	if got := ready(now); got != "" {
		t.Fatalf("standby with the database readable: %q, want ready", got)
	}
	m.Observe(nil)
	if got := ready(now); !strings.Contains(got, "database") {
		t.Fatalf("database unreadable: %q", got)
	}
	m.Observe(&Sample{Pending: 5})
	m.Leading(true)
	if got := ready(time.Now()); !strings.Contains(got, "no connection to the broker") {
		t.Fatalf("leader without a broker connection: %q", got)
	}
	brokerUp.Store(true)
	if got := ready(time.Now()); got != "" {
		t.Fatalf("leader, connected, rows pending but within the stall time: %q, want ready", got)
	}
	m.Observe(&Sample{Pending: 5, HoldupAgeSeconds: 90})
	if got := ready(time.Now().Add(2 * stalled)); !strings.Contains(got, "stalled: 5 rows pending") ||
		!strings.Contains(got, "holds them back") {
		t.Fatalf("leader that published nothing for longer than the stall time: %q", got)
	}
	m.Confirmed(5, time.Millisecond)
	m.Observe(&Sample{})
	if got := ready(time.Now().Add(2 * stalled)); got != "" {
		t.Fatalf("nothing pending: %q, want ready", got)
	}
	m.Blocked(true)
	if got := ready(time.Now()); !strings.Contains(got, "blocks publishers") {
		t.Fatalf("broker blocking: %q", got)
	}
	m.Leading(false)
	if got := ready(time.Now()); got != "" {
		t.Fatalf("standby again: %q, want ready", got)
	}
}

func TestHealth(t *testing.T) {
	m := New(nil)
	m.Alive()
	if err := m.Healthy(time.Now(), time.Minute); err != nil {
		t.Fatalf("just turned: %v", err)
	}
	if err := m.Healthy(time.Now().Add(2*time.Minute), time.Minute); err == nil {
		t.Fatal("a loop idle for twice the limit is healthy")
	}
}
