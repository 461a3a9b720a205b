package main

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/ledger"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// rssKB reads a process's resident memory.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestPausesWhileTheBrokerBlocks is RELIABILITY entry 9, on a broker node
// of the test's own: a memory alarm blocks publishers; the relay pauses
// without buffering, says so in its metrics and in status, and drains once
// the alarm is lifted.
func TestPausesWhileTheBrokerBlocks(t *testing.T) {
	t.Parallel()
	node := testenv.NewRabbitServer(t)
	dbURL := testenv.Database(t)
	r := newRigOnNode(t, dbURL, node.URL, node.URL, nil, "RELAY_LEASE_TIMEOUT=1s")
	r.write(t, 4)

	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })
	node.Ctl(t, "set_vm_memory_high_watermark", "0.000001")
	eventually(t, "the relay reports the broker blocking", func() bool { return metric(addr, "outbox_relay_broker_blocked") == 1 })

	// status says so (the leader reports at each lease renewal).
	eventually(t, "status says the leader is paused", func() bool {
		return strings.HasPrefix(relayStatus(t, dbURL).LeaderState, "paused")
	})

	// Paused, it reads and buffers nothing: memory stays flat while the
	// backlog grows in the database, with a row of 12 MB in it that a read
	// would load. The row is readable (older than every running
	// transaction), and the leader renews its lease twice after that: two
	// turns of its loop, either of which would read if it were not paused.
	before := rssKB(t, p.cmd.Process.Pid)
	big := r.commitLarge(t, 12<<20)
	eventually(t, "the large row is readable", func() bool {
		var readable bool
		err := r.pool.QueryRow(context.Background(), `SELECT txid < pg_snapshot_xmin(pg_current_snapshot()) FROM outbox WHERE event_id = $1`,
			big).Scan(&readable)
		return err == nil && readable
	})
	r.renewals(t, 2)
	if after := rssKB(t, p.cmd.Process.Pid); after > before+10*1024 {
		t.Fatalf("resident memory grew from %d to %d kB while paused", before, after)
	}

	node.Ctl(t, "set_vm_memory_high_watermark", "0.4")
	eventually(t, "the relay reports the broker unblocked", func() bool { return metric(addr, "outbox_relay_broker_blocked") == 0 })
	r.stopWrites()
	r.drained(t)
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	r.check(t, 0)
}

// commitLarge commits an event whose payload takes size bytes, for the
// ledger to expect, and returns its event id.
func (r *rig) commitLarge(t *testing.T, size int) string {
	t.Helper()
	body, err := json.Marshal(map[string]any{"agg": "large", "seq": 0, "pad": strings.Repeat("p", size)})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	if err := r.pool.QueryRow(context.Background(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
		VALUES ('ledger', 'large', 'Large', 'events', $1) RETURNING event_id::text`, body).Scan(&id); err != nil {
		t.Fatal(err)
	}
	r.ledger.Committed(id, ledger.Payload{Agg: "large", Seq: 0})
	return id
}

// TestSurvivesBrokerStopAndStart: the broker application stops (every
// connection dropped, the node refusing new ones) and starts again, twice,
// under load.
func TestSurvivesBrokerStopAndStart(t *testing.T) {
	t.Parallel()
	node := testenv.NewRabbitServer(t)
	r := newRigOnNode(t, testenv.Database(t), node.URL, node.URL, nil)
	r.write(t, 4)

	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })
	const stops = 2
	for range stops {
		time.Sleep(300 * time.Millisecond)
		node.Ctl(t, "stop_app")
		time.Sleep(500 * time.Millisecond)
		node.Ctl(t, "start_app")
	}
	r.wrote(t, 100) // writes after the last start, too
	r.stopWrites()
	r.drained(t)
	select {
	case <-p.done:
		t.Fatalf("the relay exited while the broker was stopped: %v", p.err)
	default:
	}
	stopClean(t, p)
	r.check(t, stops*window)
}
