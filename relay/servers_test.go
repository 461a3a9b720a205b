package relay_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bundle is one test's servers and the real adapters on them.
type bundle struct {
	pool   *pgxpool.Pool
	store  *postgres.Store
	broker *rabbitmq.Broker
	amqp   *testenv.Broker
	queue  string
}

func setup(t *testing.T) *bundle { return setupB(t) }

func setupB(t testing.TB) *bundle {
	t.Helper()
	url := testenv.Database(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := postgres.Open(postgres.Config{URL: url, Table: postgres.Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	env := testenv.NewBroker(t)
	broker, err := rabbitmq.New(rabbitmq.Config{URLs: []string{env.URL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	return &bundle{pool: pool, store: store, broker: broker, amqp: env, queue: env.DeclareQueue(t, "", "events")}
}

// write commits n events spread over aggs aggregates; each payload carries
// the aggregate's sequence number.
// Aggregate ids start with prefix, so separate writes use separate
// aggregates.
func (b *bundle) write(t *testing.T, prefix string, n, aggs int) {
	t.Helper()
	_, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
SELECT 'agg', $3 || (g % $2), 'Tested', 'events',
       convert_to(json_build_object('agg', $3 || (g % $2), 'seq', g / $2)::text, 'UTF8')
  FROM generate_series(0, $1 - 1) g`, n, aggs, prefix)
	if err != nil {
		t.Fatal(err)
	}
}

// run starts the relay and returns a function that stops it and returns
// Run's error.
func run(t *testing.T, cfg relay.Config, store relay.Store, pub relay.Publisher) func() error {
	t.Helper()
	r, err := relay.New(cfg, store, pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

type event struct {
	Agg string `json:"agg"`
	Seq int    `json:"seq"`
}

// delivered reads the queue until want distinct messages arrived (or 30 s),
// then checks order per aggregate and returns deliveries per message id.
// Duplicates may still come while the relay runs: a test that counts them
// stops the relay first and adds the rest of the queue (rest).
func (b *bundle) delivered(t *testing.T, want int) map[string]int {
	t.Helper()
	return b.deliveredOf(t, want, "")
}

// deliveredOf is delivered for the messages of aggregate agg only ("" for
// all): late duplicates of other aggregates, from an earlier phase of a
// test, are skipped.
func (b *bundle) deliveredOf(t *testing.T, want int, agg string) map[string]int {
	t.Helper()
	conn := b.amqp.Dial(t)
	defer conn.Close() // a consumer left behind would take later messages
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	const tag = "delivered"
	deliveries, err := ch.Consume(b.queue, tag, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	next := map[string]int{}
	take := func(d amqp.Delivery) {
		var e event
		if err := json.Unmarshal(d.Body, &e); err != nil {
			t.Fatal(err)
		}
		if agg != "" && e.Agg != agg {
			return
		}
		if seen[d.MessageId] == 0 { // first deliveries must be in order
			if e.Seq != next[e.Agg] {
				t.Fatalf("aggregate %s: first delivery of seq %d, want %d", e.Agg, e.Seq, next[e.Agg])
			}
			next[e.Agg]++
		}
		seen[d.MessageId]++
	}
	timeout := time.After(30 * time.Second)
	for len(seen) < want {
		select {
		case d := <-deliveries:
			take(d)
		case <-timeout:
			t.Fatalf("%d of %d messages arrived", len(seen), want)
		}
	}
	// Cancel the consumer and take what the broker sent it meanwhile: with
	// automatic acks, a message on its way to the consumer would be lost at
	// close. The channel closes once the broker confirmed the cancel.
	if err := ch.Cancel(tag, false); err != nil {
		t.Fatal(err)
	}
	for d := range deliveries {
		take(d)
	}
	return seen
}

// rest adds to seen what is left in the queue, once the relay has stopped:
// Run returns only after its last flights are confirmed, and the broker
// confirms a message once it is queued, so every late duplicate is in the
// queue by then and nothing more comes. Counting after the stop cannot
// miss a duplicate that was merely slow.
func (b *bundle) rest(t *testing.T, seen map[string]int) map[string]int {
	t.Helper()
	conn := b.amqp.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for {
		d, ok, err := ch.Get(b.queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return seen
		}
		seen[d.MessageId]++
	}
}

// eventually polls cond, a look at state (a counter, a table, a queue),
// until it holds, and fails the test after 30 s: "never: what".
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never within 30 s: %s", what)
		}
	}
}

// getOne waits up to 30 s for a message on queue and takes it.
func (b *bundle) getOne(t *testing.T, queue string) amqp.Delivery {
	t.Helper()
	ch, err := b.amqp.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var d amqp.Delivery
	eventually(t, "a message on "+queue, func() bool {
		var ok bool
		var err error
		if d, ok, err = ch.Get(queue, true); err != nil {
			t.Fatal(err)
		}
		return ok
	})
	return d
}

func duplicates(seen map[string]int) int {
	n := 0
	for _, c := range seen {
		n += c - 1
	}
	return n
}
