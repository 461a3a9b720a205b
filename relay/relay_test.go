package relay_test

import (
	"context"
	"encoding/json"
	"errors"
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

func setup(t *testing.T) *bundle {
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
func (b *bundle) delivered(t *testing.T, want int) map[string]int {
	t.Helper()
	ch, err := b.amqp.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(b.queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	next := map[string]int{}
	timeout := time.After(30 * time.Second)
	for len(seen) < want {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-timeout:
			t.Fatalf("%d of %d messages arrived", len(seen), want)
		}
		var e event
		if err := json.Unmarshal(d.Body, &e); err != nil {
			t.Fatal(err)
		}
		if seen[d.MessageId] == 0 { // first deliveries must be in order
			if e.Seq != next[e.Agg] {
				t.Fatalf("aggregate %s: first delivery of seq %d, want %d", e.Agg, e.Seq, next[e.Agg])
			}
			next[e.Agg]++
		}
		seen[d.MessageId]++
	}
	// Anything still arriving is a duplicate; give it a moment to show.
	for {
		select {
		case d := <-deliveries:
			seen[d.MessageId]++
			continue
		case <-time.After(200 * time.Millisecond):
		}
		return seen
	}
}

func duplicates(seen map[string]int) int {
	n := 0
	for _, c := range seen {
		n += c - 1
	}
	return n
}

func TestRelayPublishesEveryRowOnceInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 3000, 17)
	recorded := make(chan relay.Position, 100)
	stop := run(t, relay.Config{BatchSize: 256, Hooks: relay.Hooks{Recorded: func(p relay.Position, _ int) {
		select {
		case recorded <- p:
		default:
		}
	}}}, b.store, b.broker)

	b.write(t, "b", 100, 17) // rows written while it runs arrive too
	seen := b.delivered(t, 3100)
	if dups := duplicates(seen); dups != 0 {
		t.Fatalf("%d duplicates without faults", dups)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// faulty wraps the real broker and fails chosen calls after publishing a
// prefix, as a connection lost mid-batch does: the kind of fault a real
// broker cannot be made to produce on demand at an exact message.
type faulty struct {
	relay.Publisher
	mu    sync.Mutex
	calls int
	fail  map[int]int // call number -> messages confirmed before failing
}

var errInjected = errors.New("injected failure")

func (f *faulty) Publish(ctx context.Context, msgs []relay.Message) (int, error) {
	f.mu.Lock()
	f.calls++
	keep, fail := f.fail[f.calls]
	f.mu.Unlock()
	if !fail {
		return f.Publisher.Publish(ctx, msgs)
	}
	// Everything reaches the broker, but only a prefix is reported
	// confirmed: the rest are in doubt and will be republished.
	n, err := f.Publisher.Publish(ctx, msgs)
	if err != nil {
		return min(n, keep), err
	}
	return min(n, keep), errInjected
}

func TestRelayRepublishesFromTheFirstUnconfirmedRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 1000, 7)
	const batch = 100
	pub := &faulty{Publisher: b.broker, fail: map[int]int{2: 40, 3: 0, 5: 99}}
	failed := make(chan error, 10)
	stop := run(t, relay.Config{BatchSize: batch, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
		Hooks: relay.Hooks{RoundFailed: func(err error) { failed <- err }}}, b.store, pub)

	seen := b.delivered(t, 1000)
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if len(failed) != 3 {
		t.Fatalf("%d failed rounds, want 3", len(failed))
	}
	// Each failure republishes what was in doubt: 60, 100 and 1 rows.
	if dups, want := duplicates(seen), 60+100+1; dups != want {
		t.Fatalf("%d duplicates, want %d (the in-doubt rows of each failed round)", dups, want)
	}
}

// stalled never confirms, like a broker that stopped answering.
type stalled struct{ started chan struct{} }

func (s stalled) Publish(ctx context.Context, msgs []relay.Message) (int, error) {
	close(s.started)
	<-ctx.Done()
	return 0, ctx.Err()
}

func TestRelayShutdownGivesUpAfterTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 10, 1)
	pub := stalled{started: make(chan struct{})}
	stop := run(t, relay.Config{ShutdownTimeout: 200 * time.Millisecond}, b.store, pub)
	<-pub.started
	begun := time.Now()
	err := stop()
	if !errors.Is(err, relay.ErrShutdownTimeout) {
		t.Fatalf("Run = %v, want the unconfirmed round reported", err)
	}
	if waited := time.Since(begun); waited < 200*time.Millisecond {
		t.Fatalf("gave up after %s, before the shutdown timeout", waited)
	}
	st, err := b.store.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 10 {
		t.Fatalf("%d rows pending after an unconfirmed stop, want all 10", st.Pending)
	}
}

// slowConfirm delays the broker's answer so a stop lands mid-round.
type slowConfirm struct {
	relay.Publisher
	inFlight chan struct{}
	once     sync.Once
}

func (s *slowConfirm) Publish(ctx context.Context, msgs []relay.Message) (int, error) {
	s.once.Do(func() { close(s.inFlight) })
	time.Sleep(100 * time.Millisecond)
	return s.Publisher.Publish(ctx, msgs)
}

func TestRelayStopFinishesTheRoundInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 50, 5)
	pub := &slowConfirm{Publisher: b.broker, inFlight: make(chan struct{})}
	stop := run(t, relay.Config{BatchSize: 50}, b.store, pub)
	<-pub.inFlight
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	st, err := b.store.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 {
		t.Fatalf("%d rows pending after a clean stop mid-round, want 0", st.Pending)
	}
	// A restart publishes nothing again.
	stop = run(t, relay.Config{}, b.store, b.broker)
	b.write(t, "b", 1, 1)
	seen := b.delivered(t, 51)
	if dups := duplicates(seen); dups != 0 {
		t.Fatalf("%d duplicates after a clean stop and restart", dups)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []relay.Config{
		{BatchSize: -1}, {BatchSize: 10001}, {PollInterval: -time.Second},
		{PollInterval: time.Millisecond, MinPoll: time.Second}, {RetryMin: time.Second, RetryMax: time.Millisecond},
	} {
		_, err := relay.New(cfg, nil, nil)
		var ce *relay.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("New(%+v) = %v, want a ConfigError", cfg, err)
		}
	}
}
