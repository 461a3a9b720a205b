package relay_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
)

// These benchmarks measure; they assert nothing about time. Run them with
// make bench (or go test -run - -bench . -benchtime 1x ./relay/).

const drainRows = 100_000

// BenchmarkDrain measures how fast the relay drains a backlog of 256-byte
// rows, next to a raw amqp091-go publisher with the same properties and
// confirm window in the same run.
func BenchmarkDrain(b *testing.B) {
	for _, batch := range []int{500, 1000} {
		b.Run(fmt.Sprintf("relay/batch=%d", batch), func(b *testing.B) {
			var rate float64
			for range b.N {
				rate = drainOnce(b, batch)
			}
			b.ReportMetric(rate, "rows/s")
		})
		b.Run(fmt.Sprintf("raw-amqp091/window=%d", batch), func(b *testing.B) {
			var rate float64
			for range b.N {
				rate = rawOnce(b, batch)
			}
			b.ReportMetric(rate, "msgs/s")
		})
	}
}

func drainOnce(b *testing.B, batch int) float64 {
	b.StopTimer()
	bn := setupB(b)
	if _, err := bn.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
SELECT 'order', (g % 1000)::text, 'OrderPlaced', 'events', convert_to(repeat('x', 256), 'UTF8'), '{"tenant":"acme"}'
  FROM generate_series(1, $1) g`, drainRows); err != nil {
		b.Fatal(err)
	}
	if _, err := bn.pool.Exec(context.Background(), `VACUUM ANALYZE outbox`); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	total := 0
	r, err := relay.New(relay.Config{BatchSize: batch, Hooks: relay.Hooks{Recorded: func(_ relay.Position, n int) {
		if total += n; total == drainRows {
			close(done)
		}
	}}}, bn.store, bn.broker)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	b.StartTimer()
	begin := time.Now()
	go func() { errc <- r.Run(ctx) }()
	<-done
	elapsed := time.Since(begin)
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	checkQueue(b, bn, drainRows)
	return drainRows / elapsed.Seconds()
}

// rawOnce publishes the same messages straight from memory with
// amqp091-go: confirms, a window of `window` messages, persistent,
// mandatory, the relay's properties and headers.
func rawOnce(b *testing.B, window int) float64 {
	b.StopTimer()
	bn := setupB(b)
	conn, err := amqp.Dial(bn.amqp.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 256)
	b.StartTimer()
	begin := time.Now()
	ctx := context.Background()
	for sent := 0; sent < drainRows; {
		n := min(window, drainRows-sent)
		dcs := make([]*amqp.DeferredConfirmation, n)
		for i := range n {
			id := sent + i
			dcs[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", "events", true, false, amqp.Publishing{
				Headers:     amqp.Table{"tenant": "acme", "aggregate_type": "order", "aggregate_id": strconv.Itoa(id % 1000), "outbox_id": int64(id)},
				ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: strconv.Itoa(id),
				Timestamp: time.Now(), Type: "OrderPlaced", Body: body,
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		for _, dc := range dcs {
			if !dc.Wait() {
				b.Fatal("nack")
			}
		}
		sent += n
	}
	elapsed := time.Since(begin)
	b.StopTimer()
	checkQueue(b, bn, drainRows)
	return drainRows / elapsed.Seconds()
}

// checkQueue verifies the drain was real: the queue holds every message.
func checkQueue(b *testing.B, bn *bundle, want int) {
	conn, err := amqp.Dial(bn.amqp.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(bn.queue, true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	if q.Messages != want {
		b.Fatalf("queue holds %d messages, want %d", q.Messages, want)
	}
}

// BenchmarkLatency commits one row every millisecond for 5 s and reports the
// time from each commit's return to its delivery to a consumer.
func BenchmarkLatency(b *testing.B) {
	for _, poll := range []time.Duration{100 * time.Millisecond} {
		b.Run("poll="+poll.String(), func(b *testing.B) {
			var p50, p99, max time.Duration
			for b.Loop() {
				p50, p99, max = latencyOnce(b, poll)
			}
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(max.Microseconds())/1000, "max-ms")
		})
	}
}

func latencyOnce(b *testing.B, poll time.Duration) (p50, p99, max time.Duration) {
	bn := setupB(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := relay.New(relay.Config{PollInterval: poll}, bn.store, bn.broker)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = r.Run(ctx) })

	conn, err := amqp.Dial(bn.amqp.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.Consume(bn.queue, "", true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	const n = 5000
	var mu sync.Mutex
	committed := make(map[string]time.Time, n)
	received := make(map[string]time.Time, n)
	wg.Go(func() {
		for d := range deliveries {
			mu.Lock()
			received[d.MessageId] = time.Now()
			full := len(received) == n
			mu.Unlock()
			if full {
				return
			}
		}
	})
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		var id string
		if err := bn.pool.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', $1, 'OrderPlaced', 'events', convert_to(repeat('x', 256), 'UTF8')) RETURNING event_id::text`, strconv.Itoa(i%100)).Scan(&id); err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		committed[id] = time.Now()
		mu.Unlock()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := len(received)
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d delivered", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, n)
	for id, c := range committed {
		lat = append(lat, max0(received[id].Sub(c)))
	}
	slices.Sort(lat)
	return lat[n/2], lat[n*99/100], lat[n-1]
}

func max0(d time.Duration) time.Duration {
	if d < 0 {
		return 0 // delivered before the writer saw its commit return
	}
	return d
}
