package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// relayBin is the outbox-relay binary the test runs, built by TestMain.
var relayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shop-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if relayBin, err = testenv.BuildRelay(dir, false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestShop runs the whole example with two real relays, kills each relay
// with SIGKILL once and restarts it, replays both outboxes (every event
// published a second time), and checks the summary: the three views of
// every order agree, the saga finished, and the inboxes absorbed at least
// every replayed copy. Then it changes one order behind the services' backs
// and checks that the check notices.
// TestShop runs the shop once with each source of the relays
// (RELAY_SOURCE): the same saga, kills, replays and audit.
func TestShop(t *testing.T) {
	for _, source := range []string{"poll", "logical"} {
		t.Run(source, func(t *testing.T) { testShop(t, source) })
	}
}

func testShop(t *testing.T, source string) {
	ctx := context.Background()
	cfg := config{
		OrdersDB:    testenv.Database(t), // schema.sql applied: outbox and inbox
		InventoryDB: testenv.Database(t),
		AMQPURL:     testenv.NewBroker(t).URL,
		Prefix:      "shop",
		Rate:        40,
		Settle:      time.Minute,
		Out:         testWriter{t},
		Log:         slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	useSource(t, source, cfg.OrdersDB, cfg.InventoryDB)
	if err := setup(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	topo := newTopology(cfg.Prefix)
	ordersRelay := startRelay(t, cfg.OrdersDB, cfg.AMQPURL, topo.OrdersExchange, source)
	inventoryRelay := startRelay(t, cfg.InventoryDB, cfg.AMQPURL, topo.InventoryExchange, source)

	s, err := open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	type result struct {
		sum summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := s.Run(runCtx)
		done <- result{sum, err}
	}()

	// Each step waits for the system to have made progress, not for time.
	waitFor(t, done, "150 order events received", func() bool { return s.audit.distinct() >= 150 })
	ordersRelay.kill()
	ordersRelay = startRelay(t, cfg.OrdersDB, cfg.AMQPURL, topo.OrdersExchange, source)
	waitFor(t, done, "40 replies processed", func() bool { return s.ordersInbox.processed.Load() >= 40 })
	inventoryRelay.kill()
	inventoryRelay = startRelay(t, cfg.InventoryDB, cfg.AMQPURL, topo.InventoryExchange, source)
	// Replay selects the rows below the (txid, id) position, which the
	// logical source moves a commit or two behind its own, and which a
	// transaction open anywhere on the server (tests run beside this one)
	// holds back (docs/logical.md): wait until it covers what is replayed.
	waitFor(t, done, "150 order events and 40 replies to replay", func() bool {
		return replayable(t, cfg.OrdersDB, topo.OrdersExchange) >= 150 && replayable(t, cfg.InventoryDB, topo.InventoryExchange) >= 40
	})
	replayedOrders := replayAll(t, cfg.OrdersDB, cfg.AMQPURL, topo.OrdersExchange)
	replayedReplies := replayAll(t, cfg.InventoryDB, cfg.AMQPURL, topo.InventoryExchange)
	waitFor(t, done, "600 order events received", func() bool { return s.audit.distinct() >= 600 })
	stop()

	var res result
	select {
	case res = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the shop did not stop within 3 minutes")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	sum := res.sum
	var out bytes.Buffer
	sum.print(&out)
	t.Logf("replayed %d order events and %d replies\n%s", replayedOrders, replayedReplies, &out)
	if !sum.OK() {
		t.Fatal("the consistency check failed")
	}

	// The figures must add up on their own, not only in the check.
	for _, c := range []struct {
		what string
		ok   bool
	}{
		{"orders were confirmed", sum.Confirmed > 0},
		{"orders were cancelled for want of stock", sum.CancelledShort > 0},
		{"commands were rolled back", sum.RolledBack > 0},
		{"one reply per answered order", sum.Replies == sum.Confirmed+sum.CancelledShort},
		{"inventory processed every order event once", sum.InventoryProcessed == int64(sum.OrderEvents)},
		{"orders processed every reply once", sum.OrdersProcessed == int64(sum.Replies)},
		{"inventory's inbox absorbed every replayed order event", sum.InventoryDuplicates >= int64(replayedOrders)},
		{"orders' inbox absorbed every replayed reply", sum.OrdersDuplicates >= int64(replayedReplies)},
		{"the audit received every replayed order event", sum.AuditDuplicates >= replayedOrders},
		{"something was replayed", replayedOrders >= 150 && replayedReplies >= 40},
	} {
		if !c.ok {
			t.Errorf("want: %s", c.what)
		}
	}
	var versions int
	if err := s.ordersDB.QueryRow(ctx, `SELECT sum(version) FROM orders`).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if versions != sum.OrderEvents {
		t.Errorf("orders count %d events in their versions, the orders outbox holds %d", versions, sum.OrderEvents)
	}

	// The check must be able to fail: add a unit to an item of an order
	// that holds no reservation, behind the services' backs.
	var tampered int64
	err = s.ordersDB.QueryRow(ctx, `
UPDATE order_items SET qty = qty + 1
WHERE (order_id, sku) = (SELECT i.order_id, i.sku FROM order_items i JOIN orders o ON o.id = i.order_id
                         WHERE o.status <> 'confirmed' ORDER BY 1, 2 LIMIT 1)
RETURNING order_id`).Scan(&tampered)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again.Settled = true
	if again.OK() || len(again.Disagreements) != 1 || !strings.HasPrefix(again.Disagreements[0], fmt.Sprintf("order %d:", tampered)) {
		t.Errorf("after changing order %d, the check found disagreements %q (OK %v), want that order only",
			tampered, again.Disagreements, again.OK())
	}
}

// TestFold checks that the fold refuses histories that cannot happen.
func TestFold(t *testing.T) {
	ev := func(typ string, version int) loggedEvent {
		return loggedEvent{Type: typ, Event: orderEvent{OrderID: 1, Version: version, SKU: "mug", Qty: 1}}
	}
	good := []loggedEvent{ev(OrderCreated, 1), ev(ItemAdded, 2), ev(ItemAdded, 3), ev(OrderPlaced, 4), ev(OrderCancelled, 5)}
	st, err := fold(good)
	if err != nil || !st.equal(orderState{Status: statusCancelled, Version: 5, Items: map[string]int{"mug": 2}}) {
		t.Errorf("fold of a good history = %v, %v", st, err)
	}
	for name, events := range map[string][]loggedEvent{
		"a gap":                 {ev(OrderCreated, 1), ev(ItemAdded, 3)},
		"a repeat":              {ev(OrderCreated, 1), ev(ItemAdded, 2), ev(ItemAdded, 2)},
		"swapped":               {ev(OrderCreated, 1), ev(OrderPlaced, 3), ev(ItemAdded, 2)},
		"no creation":           {ev(ItemAdded, 1)},
		"an item after placing": {ev(OrderCreated, 1), ev(OrderPlaced, 2), ev(ItemAdded, 3)},
		"confirmed unplaced":    {ev(OrderCreated, 1), ev(OrderConfirmed, 2)},
		"confirmed, cancelled":  {ev(OrderCreated, 1), ev(OrderPlaced, 2), ev(OrderConfirmed, 3), ev(OrderCancelled, 4)},
	} {
		if st, err := fold(events); err == nil {
			t.Errorf("%s: fold = %v, want an error", name, st)
		}
	}
}

// relayProc is an outbox-relay running as a subprocess, so that the test
// can SIGKILL it.
type relayProc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// useSource prepares the databases for the relays' source: for logical,
// outbox-relay migrate creates each one's publication and slot, before the
// shop writes a row.
func useSource(t *testing.T, source string, dbURLs ...string) {
	t.Helper()
	if source == "poll" {
		return
	}
	for _, db := range dbURLs {
		testenv.SkipUnlessLogical(t, db)
		cmd := exec.Command(relayBin, "migrate")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_DATABASE_URL=" + db, "RELAY_SOURCE=" + source}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("outbox-relay migrate with RELAY_SOURCE=%s: %v\n%s", source, err, out)
		}
	}
}

// startRelay runs `outbox-relay run` on the outbox of dbURL, publishing to
// exchange, reading from source. The replica name is the exchange's, so that
// a restarted relay takes its dead predecessor's lease at once.
func startRelay(t *testing.T, dbURL, amqpURL, exchange, source string) *relayProc {
	t.Helper()
	p := &relayProc{cmd: exec.Command(relayBin, "run"), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + dbURL,
		"RELAY_AMQP_URL=" + amqpURL,
		"RELAY_EXCHANGE=" + exchange,
		"RELAY_REPLICA_NAME=" + exchange,
		"RELAY_SOURCE=" + source,
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("relay for %s (pid %d):\n%s", exchange, p.cmd.Process.Pid, p.out)
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to end.
func (p *relayProc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

var replayed = regexp.MustCompile(`replayed (\d+) rows?`)

// wouldReplay is the summary line of outbox-relay replay --dry-run.
var wouldReplay = regexp.MustCompile(`dry run: (\d+) rows? would be replayed`)

// replayable counts the rows outbox-relay replay --all would replay from
// the outbox of dbURL (--dry-run: it sends nothing).
func replayable(t *testing.T, dbURL, exchange string) int {
	t.Helper()
	cmd := exec.Command(relayBin, "replay", "--all", "--dry-run")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_DATABASE_URL=" + dbURL, "RELAY_EXCHANGE=" + exchange}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("outbox-relay replay --all --dry-run: %v\n%s", err, out)
	}
	m := wouldReplay.FindSubmatch(out)
	if m == nil {
		t.Fatalf("outbox-relay replay --dry-run did not say how many rows it would replay:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// replayAll runs `outbox-relay replay --all` on the outbox of dbURL and
// returns how many rows it published again.
func replayAll(t *testing.T, dbURL, amqpURL, exchange string) int {
	t.Helper()
	cmd := exec.Command(relayBin, "replay", "--all")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + amqpURL, "RELAY_EXCHANGE=" + exchange}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("outbox-relay replay --all: %v\n%s", err, out)
	}
	m := replayed.FindSubmatch(out)
	if m == nil {
		t.Fatalf("outbox-relay replay --all did not say how many rows it replayed:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// waitFor polls cond until it holds. It fails the test if the shop stopped
// first (its result is then reported), or after two minutes.
func waitFor[R any](t *testing.T, done chan R, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		select {
		case r := <-done:
			t.Fatalf("the shop stopped before %s: %+v", what, r)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 2 minutes", what)
		}
	}
}

// testWriter writes to the test log, one call per line.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
