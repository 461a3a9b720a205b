package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// queueName is the queue every measurement publishes to, through the
// default exchange; each rig has a virtual host of its own. A rig of
// several queues (newRigQueues) names them queueName-0, queueName-1, ...
const queueName = "events"

// Queue types a rig can declare.
const (
	classic = "classic"
	quorum  = "quorum"
)

// rig is one run's database (with the outbox schema), virtual host and
// durable queue. Both are removed when the (sub)test that made it ends.
// A rig made with queue type "" has the database only.
type rig struct {
	dbURL string
	pool  *pgxpool.Pool
	vhost *testenv.Broker
	// queues are the rig's queues, each aggregate's messages in one of
	// them (queueOf).
	queues []string
	// brokerURLs, when set, are the URLs the relay is given (a cluster's
	// nodes, the one vhost dials first); else vhost's URL alone.
	brokerURLs []string
}

// relayURLs returns the broker URLs the relay is configured with, as
// RELAY_AMQP_URL would list them.
func (r *rig) relayURLs() []string {
	if len(r.brokerURLs) > 0 {
		return r.brokerURLs
	}
	return []string{r.vhost.URL}
}

func newRig(t *testing.T, queueType string) *rig { return newRigQueues(t, queueType, 1) }

// newRigQueues is newRig with k queues of the type, which the broker can
// serve in parallel (a classic queue is one process): queueName alone for
// k = 1.
func newRigQueues(t *testing.T, queueType string, k int) *rig {
	t.Helper()
	r := &rig{dbURL: testenv.Database(t), queues: []string{queueName}}
	if k > 1 {
		r.queues = make([]string, k)
		for q := range r.queues {
			r.queues[q] = fmt.Sprintf("%s-%d", queueName, q)
		}
	}
	pool, err := pgxpool.New(context.Background(), r.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	r.pool = pool
	if queueType == "" {
		return r
	}
	r.vhost = testenv.NewBroker(t)
	conn := r.vhost.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range r.queues {
		if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": queueType}); err != nil {
			t.Fatalf("declare %s queue: %v", queueType, err)
		}
	}
	return r
}

// queueOf returns the queue of message (and row) i: its aggregate's, as
// aggregateOf and fill number them.
func (r *rig) queueOf(i int) string { return r.queues[i%1000%len(r.queues)] }

// payload is the 256-byte body of every message.
var payload = []byte(`{"order_id":1,"status":"placed","note":"` + strings.Repeat("x", 256-42) + `"}`)

// fill commits n rows, 1000 per transaction, spread over 1000 aggregates,
// with 256-byte payloads and one header, then vacuums and analyzes the
// table so every run reads the same shape of table. Each row records its
// own aggregate's ordering lock, as a writer that locks the one aggregate
// it writes leaves it, so the relay's lock check runs on every row. Each
// row's routing key is its queue (queueOf).
func (r *rig) fill(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	for done := 0; done < n; done += 1000 {
		if _, err := r.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers, lock_keys)
SELECT 'order', (g % 1000)::text, 'OrderPlaced', ($3::text[])[g % 1000 % cardinality($3::text[]) + 1], $4, '{"tenant":"acme"}',
       outbox_aggregate_key('order', (g % 1000)::text)::text
  FROM generate_series($1::int, $2::int - 1) g`, done, min(done+1000, n), r.queues, payload); err != nil {
			t.Fatalf("fill outbox: %v", err)
		}
		if n >= 500_000 && (done+1000)%200_000 == 0 {
			progress("   filled %d of %d rows", done+1000, n)
		}
	}
	if _, err := r.pool.Exec(ctx, `VACUUM ANALYZE outbox`); err != nil {
		t.Fatal(err)
	}
	if n >= 500_000 {
		progress("   filled %d rows in %s", n, time.Since(start).Round(time.Second))
	}
}

// checkCount fails unless the queues hold exactly want messages.
func (r *rig) checkCount(t *testing.T, want int) {
	t.Helper()
	conn := r.vhost.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, name := range r.queues {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect queue: %v", err)
		}
		held += q.Messages
	}
	if held != want {
		t.Fatalf("queues hold %d messages, want %d", held, want)
	}
}

// checkDelivered fails unless the queues hold exactly want messages with
// distinct message ids, each aggregate's in ascending outbox_id order (the
// order of the rows, which were written in id order). It empties the
// queues.
func (r *rig) checkDelivered(t *testing.T, want int) {
	t.Helper()
	r.checkCount(t, want)
	c := r.consume(t, want)
	select {
	case <-c.all:
	case <-time.After(2 * time.Minute):
		t.Fatalf("consumed %d of %d messages in 2 minutes", c.count(), want)
	}
	c.check(t)
}

// consumer takes messages off the queue as they come, counting distinct
// ones, duplicates, and messages that arrive before a message of their
// aggregate with a higher outbox_id. Messages are told apart by their
// outbox_id header, which numbers the rows (and the raw publisher's
// messages) from 1: a slice indexed by it is cheaper than a map of message
// ids, which would load the test process when it takes a million messages.
type consumer struct {
	all chan struct{} // closed once want distinct messages arrived

	mu                   sync.Mutex
	seen                 []bool           // by outbox_id
	last                 map[string]int64 // highest outbox_id per aggregate
	distinct             int
	dups, reorder, alien int
	// tenths[k] is when the k×want/10-th distinct message arrived
	// (tenths[0]: the first).
	tenths [11]time.Time
}

// consume starts a consumer on the queues, a channel each; it stops when
// the test ends.
func (r *rig) consume(t *testing.T, want int) *consumer {
	t.Helper()
	conn := r.vhost.Dial(t)
	c := &consumer{all: make(chan struct{}), seen: make([]bool, want+1), last: map[string]int64{}}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { _ = conn.Close() }) // ends deliveries; runs before wg.Wait
	for _, q := range r.queues {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Qos(2000, 0, false); err != nil {
			t.Fatal(err)
		}
		deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for d := range deliveries {
				if c.take(d) {
					close(c.all)
				}
				if d.DeliveryTag%1000 == 0 {
					_ = d.Ack(true)
				}
			}
		})
	}
	return c
}

// take records one delivery and reports whether it was the last distinct
// message wanted.
func (c *consumer) take(d amqp.Delivery) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	agg, _ := d.Headers["aggregate_id"].(string)
	id, _ := d.Headers["outbox_id"].(int64)
	switch {
	case id < 1 || id >= int64(len(c.seen)):
		c.alien++
		return false
	case c.seen[id]:
		c.dups++
		return false
	}
	c.seen[id] = true
	c.distinct++
	if id <= c.last[agg] {
		c.reorder++
	}
	c.last[agg] = max(c.last[agg], id)
	want := len(c.seen) - 1
	if c.distinct == 1 {
		c.tenths[0] = now
	}
	if c.distinct%max(1, want/10) == 0 && c.distinct/max(1, want/10) <= 10 {
		c.tenths[c.distinct/max(1, want/10)] = now
	}
	return c.distinct == want
}

// rate returns messages per second between the from-th and to-th tenth of
// the wanted messages (0 is the first message).
func (c *consumer) rate(from, to int) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := len(c.seen) - 1
	n := (to - from) * want / 10
	if from == 0 {
		n-- // from the first message, not from none
	}
	return float64(n) / c.tenths[to].Sub(c.tenths[from]).Seconds()
}

func (c *consumer) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.distinct
}

// check fails the test on duplicates or on messages out of order within
// their aggregate.
func (c *consumer) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dups > 0 || c.reorder > 0 || c.alien > 0 {
		t.Fatalf("of %d messages: %d duplicates, %d out of order within their aggregate, %d with an unexpected outbox_id",
			c.distinct, c.dups, c.reorder, c.alien)
	}
}

// jsonField decodes one field of a JSON object.
func jsonField(b []byte, field string) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return nil, err
	}
	v, ok := obj[field]
	if !ok {
		return nil, fmt.Errorf("no field %q in %s", field, b)
	}
	return v, nil
}
