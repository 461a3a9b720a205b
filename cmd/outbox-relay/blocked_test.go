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

	amqp "github.com/rabbitmq/amqp091-go"

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
// without buffering, says so in its log and in status, and drains once the
// alarm is lifted.
func TestPausesWhileTheBrokerBlocks(t *testing.T) {
	t.Parallel()
	node := testenv.NewRabbitServer(t)
	conn, err := amqp.Dial(node.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("events", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}

	dbURL := testenv.Database(t)
	r := &rig{dbURL: dbURL, ledger: ledger.New()}
	r.pool = newPool(t, dbURL)
	r.env = []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + node.URL,
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=20ms", "RELAY_LEASE_TIMEOUT=1s"}
	ctx, cancel := context.WithCancel(context.Background())
	c := &ledger.Consumer{URL: node.URL, Queue: "events", Ledger: r.ledger}
	r.wg.Go(func() { c.Run(ctx) })
	defer func() { cancel(); r.close() }()
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
	conn, err := amqp.Dial(node.URL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("events", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	dbURL := testenv.Database(t)
	r := &rig{dbURL: dbURL, ledger: ledger.New(), pool: newPool(t, dbURL)}
	r.env = []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + node.URL,
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=20ms"}
	ctx, cancel := context.WithCancel(context.Background())
	c := &ledger.Consumer{URL: node.URL, Queue: "events", Ledger: r.ledger}
	r.wg.Go(func() { c.Run(ctx) })
	defer func() { cancel(); r.close() }()
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
