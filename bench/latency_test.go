package bench

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

// latencyRate is the steady commit rate of measurement 6, rows per second.
const latencyRate = 1000

// latencyWriters commit the rows: one would fall behind whenever a commit
// takes longer than the 1 ms between rows.
const latencyWriters = 4

// measureLatency: measurement 6, commit-to-delivery latency at a steady
// 1000 rows/s, polling only (the default RELAY_POLL_INTERVAL, adaptive from
// 1 ms) and with the NOTIFY trigger and the listener waking the relay.
func measureLatency(t *testing.T, s *suite) {
	for _, notify := range []bool{false, true} {
		name, what := "polling", "commit→delivery at 1000 rows/s, polling only (RELAY_POLL_INTERVAL 100ms, adaptive)"
		if notify {
			name, what = "notify", "commit→delivery at 1000 rows/s, NOTIFY trigger + listener as Wake"
		}
		var res latencies
		if !t.Run(name, func(t *testing.T) { res = latencyOnce(t, s.mode.latencyFor, notify) }) {
			continue
		}
		progress("   %s: p50 %s, p99 %s, max %s over %d rows at %.0f rows/s",
			name, ms(res.p50), ms(res.p99), ms(res.max), res.rows, res.rate)
		s.add(row{what: what,
			figure: fmt.Sprintf("p50 %s, p99 %s, max %s (%d rows, %.0f rows/s achieved)", ms(res.p50), ms(res.p99), ms(res.max), res.rows, res.rate),
			goal:   "p50 < 2 ms, p99 ≤ 5 ms",
			met:    yesNo(res.p50 < 2*time.Millisecond && res.p99 <= 5*time.Millisecond)})
	}
}

// latencies summarizes one latency run.
type latencies struct {
	p50, p99, max time.Duration
	rows          int
	rate          float64 // rows per second actually committed
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func latencyOnce(t *testing.T, d time.Duration, notify bool) latencies {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRig(t, classic)
	if notify {
		if _, err := r.pool.Exec(ctx, `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()`); err != nil {
			t.Fatal(err)
		}
	}
	store, err := postgres.Open(postgres.Config{URL: r.dbURL, Table: postgres.Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	broker, err := rabbitmq.New(rabbitmq.Config{URLs: []string{r.vhost.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = broker.Close() }()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	cfg := relay.Config{}
	if notify {
		l := postgres.NewListener(r.dbURL, slog.New(slog.DiscardHandler))
		wg.Go(func() { l.Run(ctx) })
		cfg.Wake = l.C()
		waitListening(t, r)
	}
	leading := make(chan struct{})
	cfg.Hooks.Leading = func() { close(leading) }
	rl, err := relay.New(cfg, store, broker)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := rl.Run(ctx); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	select {
	case <-leading:
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not take the lease in 30 s")
	}

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
	n := int(d.Seconds() * latencyRate)
	var mu sync.Mutex
	committed := make(map[string]time.Time, n)
	received := make(map[string]time.Time, n)
	dups := 0
	allIn := make(chan struct{})
	wg.Go(func() { receive(deliveries, n, &mu, received, &dups, allIn) })

	first, last := commitPaced(t, r, n, &mu, committed)
	select {
	case <-allIn:
	case <-time.After(30 * time.Second):
		mu.Lock()
		got := len(received)
		mu.Unlock()
		t.Fatalf("%d of %d rows delivered 30 s after the last commit", got, n)
	}

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
		rate: float64(n-1) / last.Sub(first).Seconds()}
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

// commitPaced commits n rows, one per millisecond on a fixed schedule
// (a late row does not delay the next ones), each in its own transaction
// from one of latencyWriters connections, and records when each commit
// returned. It returns the times of the first and last commit.
func commitPaced(t *testing.T, r *rig, n int, mu *sync.Mutex, committed map[string]time.Time) (first, last time.Time) {
	ctx := context.Background()
	slots := make(chan int, n)
	var wg sync.WaitGroup
	errs := make(chan error, latencyWriters)
	for range latencyWriters {
		wg.Go(func() {
			for i := range slots {
				var id string
				if err := r.pool.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
VALUES ('order', $1, 'OrderPlaced', $2, $3, '{"tenant":"acme"}') RETURNING event_id::text`,
					strconv.Itoa(i%100), queueName, payload).Scan(&id); err != nil {
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
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / latencyRate)))
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

// waitListening waits until the listener's LISTEN has run, so the first
// rows' notifications are not missed.
func waitListening(t *testing.T, r *rig) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := r.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'outbox-relay listener' AND query LIKE 'LISTEN%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("listener not listening after 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
