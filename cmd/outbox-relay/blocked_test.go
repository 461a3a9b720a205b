package main

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
// without buffering, says so in its log and in status, and drains once the
// alarm is lifted.
func TestPausesWhileTheBrokerBlocks(t *testing.T) {
	t.Parallel()
	node := testenv.NewRabbitServer(t)
	dbURL := testenv.Database(t)
	r := newRigOnNode(t, dbURL, node.URL, node.URL, nil, "RELAY_LEASE_TIMEOUT=1s")
	r.write(t, 4)

	p := start(t, r.env)
	p.waitLog("connected to broker", 30*time.Second)
	node.Ctl(t, "set_vm_memory_high_watermark", "0.000001")
	p.waitLog("paused publishing", 30*time.Second)

	// status says so (the leader reports at each lease renewal).
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + dbURL}, "status", "--json")
		var st struct {
			State string `json:"leader_state"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && strings.HasPrefix(st.State, "paused") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never said paused: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Paused, it reads and buffers nothing: memory stays flat while the
	// backlog grows in the database.
	before := rssKB(t, p.cmd.Process.Pid)
	time.Sleep(2 * time.Second)
	if after := rssKB(t, p.cmd.Process.Pid); after > before+10*1024 {
		t.Fatalf("resident memory grew from %d to %d kB while paused", before, after)
	}

	node.Ctl(t, "set_vm_memory_high_watermark", "0.4")
	p.waitLog("resumed publishing", 30*time.Second)
	r.stopWrites()
	r.drained(t)
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	r.check(t, 0)
}

// TestSurvivesBrokerStopAndStart: the broker application stops (every
// connection dropped, the node refusing new ones) and starts again, twice,
// under load.
func TestSurvivesBrokerStopAndStart(t *testing.T) {
	t.Parallel()
	node := testenv.NewRabbitServer(t)
	r := newRigOnNode(t, testenv.Database(t), node.URL, node.URL, nil)
	r.write(t, 4)

	p := start(t, r.env)
	p.waitLog("connected to broker", 30*time.Second)
	const stops = 2
	for range stops {
		time.Sleep(300 * time.Millisecond)
		node.Ctl(t, "stop_app")
		time.Sleep(500 * time.Millisecond)
		node.Ctl(t, "start_app")
	}
	time.Sleep(300 * time.Millisecond)
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
