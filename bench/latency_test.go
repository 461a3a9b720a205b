package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// latencyWriters commit the rows, each on a connection of its own, as a
// service's request handlers do.
const latencyWriters = 8

// latencyAggregates the rows are spread over.
const latencyAggregates = 200

// latencyRates are the steady commit rates measured, rows per second; the
// goals are set at 1000.
var latencyRates = []int{100, 1000, 5000}

// measureLatency: measurement 6, commit-to-delivery latency as a user
// measures it. The relay binary runs as a subprocess with its defaults
// (only the two URLs set), latencyWriters connections commit one 256-byte
// row per transaction at a steady rate over latencyAggregates aggregates,
// and a consumer takes the messages: latency runs from the moment COMMIT
// returns in the writer to the moment the consumer receives the message.
// Once polling only (no trigger), once with the NOTIFY trigger of
// schema.sql, once with the logical source (RELAY_SOURCE=logical). Then the idle relay: what it costs its database and its CPU.
func measureLatency(t *testing.T, s *suite) {
	bin := buildRelay(t)
	type key struct {
		wake wake
		rate int
	}
	// Rounds interleave every case, so a slow minute of the machine
	// lands on all of them; each figure is the median over the rounds.
	rounds := min(s.mode.rounds, 3)
	results := map[key][]latencies{}
	for round := range rounds {
		for _, w := range wakes {
			for _, rate := range latencyRates {
				k := key{w, rate}
				name := fmt.Sprintf("round%d/%s/%d", round+1, w, rate)
				d := max(s.mode.latencyFor, time.Duration(2000/rate)*time.Second)
				var res latencies
				if !t.Run(name, func(t *testing.T) { res = latencyOnce(t, bin, rate, d, w) }) {
					continue
				}
				progress("   %s: p50 %s, p99 %s, max %s over %d rows at %.0f rows/s; relay %.0f queries/s",
					name, ms(res.p50), ms(res.p99), ms(res.max), res.rows, res.rate, res.queries)
				results[k] = append(results[k], res)
			}
		}
	}
	for _, w := range wakes {
		for _, rate := range latencyRates {
			rs := results[key{w, rate}]
			if len(rs) == 0 {
				continue
			}
			med := func(f func(latencies) float64) float64 {
				v := make([]float64, len(rs))
				for i, r := range rs {
					v[i] = f(r)
				}
				return median(v)
			}
			p50 := time.Duration(med(func(r latencies) float64 { return float64(r.p50) }))
			p99 := time.Duration(med(func(r latencies) float64 { return float64(r.p99) }))
			worst := slices.MaxFunc(rs, func(a, b latencies) int { return int(a.max - b.max) }).max
			p99s := make([]string, len(rs))
			for i, r := range rs {
				p99s[i] = ms(r.p99)
			}
			r := row{what: fmt.Sprintf("relay binary (defaults), commit→delivery, %d writers at %d rows/s, %s", latencyWriters, rate, w),
				figure: fmt.Sprintf("p50 %s, p99 %s (rounds: %s), max %s; %.0f rows/s achieved; the relay ran about %.0f queries/s",
					ms(p50), ms(p99), strings.Join(p99s, ", "), ms(worst), med(func(r latencies) float64 { return r.rate }),
					med(func(r latencies) float64 { return r.queries }))}
			switch {
			case rate == 1000 && w == wakePoll:
				r.goal, r.met = "p50 < 2 ms, p99 ≤ 5 ms", yesNo(p50 < 2*time.Millisecond && p99 <= 5*time.Millisecond)
			case rate == 1000 && w == wakeNotify:
				r.goal, r.met = "p99 ≤ 3 ms", yesNo(p99 <= 3*time.Millisecond)
			case rate == 1000:
				r.goal, r.met = "p50 < 1 ms, p99 ≤ 3 ms", yesNo(p50 < time.Millisecond && p99 <= 3*time.Millisecond)
			}
			s.add(r)
		}
	}
	var floor latencies
	if t.Run("broker-floor", func(t *testing.T) { floor = brokerFloor(t, s.mode.latencyFor) }) {
		progress("   raw publisher at 1000 msgs/s: p50 %s, p99 %s, max %s", ms(floor.p50), ms(floor.p99), ms(floor.max))
		s.add(row{what: "for comparison: a raw amqp091-go publisher, publish→delivery at 1000 msgs/s (the broker's own share)",
			figure: fmt.Sprintf("p50 %s, p99 %s, max %s", ms(floor.p50), ms(floor.p99), ms(floor.max))})
	}
	var idle idleCost
	if t.Run("idle", func(t *testing.T) { idle = idleOnce(t, bin, 10*time.Second) }) {
		progress("   idle: %.1f queries/s, %.1f ms CPU/s", idle.queries, idle.cpuMs)
		s.add(row{what: "idle relay binary (defaults): queries against its database",
			figure: fmt.Sprintf("%.1f queries/s", idle.queries), goal: "≤ 20 queries/s", met: yesNo(idle.queries <= 20)})
		s.add(row{what: "idle relay binary (defaults): CPU", figure: fmt.Sprintf("%.1f ms of CPU per second", idle.cpuMs)})
	}
}

// wake is how the relay learns of new rows in a latency run.
type wake int

const (
	wakePoll    wake = iota // polling only, no trigger
	wakeNotify              // the NOTIFY trigger of schema.sql
	wakeLogical             // RELAY_SOURCE=logical: the slot pushes each commit
)

var wakes = []wake{wakePoll, wakeNotify, wakeLogical}

func (w wake) String() string {
	return [...]string{"polling", "NOTIFY trigger", "logical source"}[w]
}

// latencies summarizes one latency run.
type latencies struct {
	p50, p99, max time.Duration
	rows          int
	rate          float64 // rows per second actually committed
	queries       float64 // statements per second the relay ran, roughly
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// startRelay runs the relay binary with its defaults against the rig's
// broker and the database at dbURL (the rig's, or a way to it), and returns
// it once it leads (and listens, with notify); it is stopped when the test
// ends.
func startRelay(t *testing.T, bin string, r *rig, dbURL string, w wake) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(), "RELAY_DATABASE_URL="+dbURL, "RELAY_AMQP_URL="+r.vhost.URL)
	if w == wakeLogical {
		cmd.Env = append(cmd.Env, "RELAY_SOURCE=logical")
		migrate := exec.Command(bin, "migrate")
		migrate.Env = cmd.Env
		if out, err := migrate.CombinedOutput(); err != nil {
			t.Fatalf("migrate with RELAY_SOURCE=logical: %v\n%s", err, out)
		}
	}
	logs, err := os.Create(filepath.Join(t.TempDir(), "relay.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logs.Close()
		if t.Failed() {
			t.Logf("relay log:\n%s", tail(logs.Name()))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var leading, listening, reading bool
		err := r.pool.QueryRow(context.Background(), `
SELECT EXISTS (SELECT 1 FROM outbox_relay_position WHERE holder IS NOT NULL AND lease_until > now()),
       EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                  AND application_name = 'outbox-relay listener' AND query LIKE 'LISTEN%'),
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&leading, &listening, &reading)
		if err == nil && leading && (listening || w != wakeNotify) && (reading || w != wakeLogical) {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay does not lead (and listen) 30 s after start (%v)\n%s", err, tail(logs.Name()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func latencyOnce(t *testing.T, bin string, rate int, d time.Duration, w wake) latencies {
	r := newRig(t, classic)
	if w == wakeNotify {
		if _, err := r.pool.Exec(context.Background(), `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()`); err != nil {
			t.Fatal(err)
		}
	}
	startRelay(t, bin, r, r.dbURL, w)

	conn := r.vhost.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queueName, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := int(d.Seconds() * float64(rate))
	var mu sync.Mutex
	committed := make(map[string]time.Time, n)
	received := make(map[string]time.Time, n)
	dups := 0
	allIn := make(chan struct{})
	go receive(deliveries, n, &mu, received, &dups, allIn)

	xacts0 := transactions(t, r)
	first, last := commitPaced(t, r, n, rate, &mu, committed)
	select {
	case <-allIn:
	case <-time.After(30 * time.Second):
		mu.Lock()
		got := len(received)
		mu.Unlock()
		t.Fatalf("%d of %d rows delivered 30 s after the last commit", got, n)
	}

	// Every statement of the relay's and every writer's row is a
	// transaction: what the database counted beyond the rows is the
	// relay's (the server's counts lag a second or so: about).
	relayQueries := float64(transactions(t, r)-xacts0-int64(n)-1) / last.Sub(first).Seconds()
	mu.Lock()
	defer mu.Unlock()
	if dups > 0 {
		t.Fatalf("%d duplicate deliveries", dups)
	}
	lat := make([]time.Duration, 0, n)
	for id, c := range committed {
		got, ok := received[id]
		if !ok {
			t.Fatalf("row %s committed, never delivered", id)
		}
		// A delivery can beat the writer's own view of its commit.
		lat = append(lat, max(0, got.Sub(c)))
	}
	slices.Sort(lat)
	return latencies{p50: lat[n/2], p99: lat[n*99/100], max: lat[n-1], rows: n,
		rate: float64(n-1) / last.Sub(first).Seconds(), queries: relayQueries}
}

// transactions reads how many transactions the rig's database has run.
func transactions(t *testing.T, r *rig) int64 {
	t.Helper()
	_, _ = r.pool.Exec(context.Background(), `SELECT pg_stat_force_next_flush()`)
	var n int64
	if err := r.pool.QueryRow(context.Background(),
		`SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// brokerFloor measures what the broker alone adds: a raw publisher sends a
// message each millisecond with confirms, and a consumer takes them.
func brokerFloor(t *testing.T, d time.Duration) latencies {
	r := newRig(t, classic)
	conn := r.vhost.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queueName, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	pconn := r.vhost.Dial(t)
	defer pconn.Close()
	pch, err := pconn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := pch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	n := int(d.Seconds() * 1000)
	var mu sync.Mutex
	sent := make(map[string]time.Time, n)
	received := make(map[string]time.Time, n)
	dups := 0
	allIn := make(chan struct{})
	go receive(deliveries, n, &mu, received, &dups, allIn)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		mu.Lock()
		sent[id] = time.Now()
		mu.Unlock()
		if _, err := pch.PublishWithDeferredConfirmWithContext(context.Background(), "", queueName, true, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, Body: payload}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-allIn:
	case <-time.After(30 * time.Second):
		t.Fatal("not every message arrived")
	}
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, n)
	for id, s := range sent {
		lat = append(lat, received[id].Sub(s))
	}
	slices.Sort(lat)
	return latencies{p50: lat[n/2], p99: lat[n*99/100], max: lat[n-1], rows: n}
}

// receive records when each message arrives, counting duplicates, and
// closes allIn once n distinct messages arrived.
func receive(deliveries <-chan amqp.Delivery, n int, mu *sync.Mutex, received map[string]time.Time, dups *int, allIn chan struct{}) {
	for d := range deliveries {
		now := time.Now()
		mu.Lock()
		if _, ok := received[d.MessageId]; ok {
			*dups++
		} else {
			received[d.MessageId] = now
		}
		full := len(received) == n
		mu.Unlock()
		if full {
			close(allIn)
			return
		}
	}
}

// commitPaced commits n rows at rate rows per second on a fixed schedule
// (a late row does not delay the next ones), each in its own transaction
// on one of latencyWriters connections, and records when each commit
// returned. It returns the times of the first and last commit.
func commitPaced(t *testing.T, r *rig, n, rate int, mu *sync.Mutex, committed map[string]time.Time) (first, last time.Time) {
	ctx := context.Background()
	slots := make(chan int, n)
	var wg sync.WaitGroup
	errs := make(chan error, latencyWriters)
	for range latencyWriters {
		wg.Go(func() {
			conn, err := r.pool.Acquire(ctx) // a connection of its own
			if err != nil {
				errs <- err
				return
			}
			defer conn.Release()
			for i := range slots {
				var id string
				if err := conn.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
VALUES ('order', $1, 'OrderPlaced', $2, $3, '{"tenant":"acme"}') RETURNING event_id::text`,
					strconv.Itoa(i%latencyAggregates), queueName, payload).Scan(&id); err != nil {
					errs <- err
					return
				}
				now := time.Now()
				mu.Lock()
				committed[id] = now
				if first.IsZero() || now.Before(first) {
					first = now
				}
				if now.After(last) {
					last = now
				}
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		slots <- i
	}
	close(slots)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("commit: %v", err)
	}
	return first, last
}

// idleCost is what an idle relay costs.
type idleCost struct {
	queries float64 // statements per second against its database
	cpuMs   float64 // milliseconds of CPU per second
}

// idleOnce runs the relay binary, with its defaults, on an empty outbox
// for d, after it has settled, and counts the statements it sends its
// database (through a counting proxy) and the CPU it uses.
func idleOnce(t *testing.T, bin string, d time.Duration) idleCost {
	r := newRig(t, classic)
	counter, via := countQueries(t, r.dbURL)
	cmd := startRelay(t, bin, r, via, wakePoll)
	time.Sleep(2 * time.Second) // the poll backs off to its longest wait
	q0, cpu0 := counter.n.Load(), cpuOf(t, cmd.Process.Pid)
	time.Sleep(d)
	q1, cpu1 := counter.n.Load(), cpuOf(t, cmd.Process.Pid)
	return idleCost{queries: float64(q1-q0) / d.Seconds(), cpuMs: float64((cpu1 - cpu0).Milliseconds()) / d.Seconds()}
}

// cpuOf reads a process's user and system CPU time from /proc/PID/stat.
func cpuOf(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the parenthesized command: state is field 3, utime 14
	// and stime 15, in clock ticks (100 per second on Linux).
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
