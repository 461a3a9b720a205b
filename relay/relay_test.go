package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
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
		if agg != "" && e.Agg != agg {
			continue
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

// getOne waits up to 30 s for a message on queue and takes it.
func (b *bundle) getOne(t *testing.T, queue string) amqp.Delivery {
	t.Helper()
	ch, err := b.amqp.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return d
		}
	}
	t.Fatalf("nothing arrived on %s", queue)
	return amqp.Delivery{}
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

// faulty wraps the real broker and, the first time a flight holding one of
// the target rows is waited for, reports only the rows before it confirmed,
// as a connection lost mid-flight does: the kind of fault a real broker
// cannot be made to produce on demand at an exact message.
type faulty struct {
	relay.Publisher
	mu      sync.Mutex
	targets map[int64]bool // outbox ids still armed
}

var errInjected = errors.New("injected failure")

func (f *faulty) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	return &faultyConfirmation{Confirmation: f.Publisher.Publish(ctx, msgs), f: f, msgs: msgs}
}

type faultyConfirmation struct {
	relay.Confirmation
	f    *faulty
	msgs []relay.Message
}

func (c *faultyConfirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	answers, err := c.Confirmation.Wait(ctx)
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	for i, m := range c.msgs {
		if id := m.Headers["outbox_id"].(int64); c.f.targets[id] && answers[i].Confirmed {
			delete(c.f.targets, id)
			// Everything from i on reached the broker but is in doubt.
			for j := i; j < len(answers); j++ {
				answers[j] = relay.Answer{}
			}
			return answers, errInjected
		}
	}
	return answers, err
}

func TestRelayRepublishesFromTheFirstUnconfirmedRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "a", 1000, 7)
	const batch = 100
	pub := &faulty{Publisher: b.broker, targets: map[int64]bool{1: true, 250: true, 999: true}}
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
	// Each failure republishes at least its target row, which reached the
	// broker, and at most the in-flight window (two batches).
	if dups, most := duplicates(seen), 3*2*batch; dups < 3 || dups > most {
		t.Fatalf("%d duplicates, want between 3 and %d (a window per failure)", dups, most)
	}
}

// stalled never confirms, like a broker that stopped answering.
type stalled struct{ started chan struct{} }

func (s stalled) Publish(_ context.Context, msgs []relay.Message) relay.Confirmation {
	close(s.started)
	return stalledConfirmation{n: len(msgs)}
}

func (s stalled) Reset() {}

func (s stalled) Connect(context.Context) error { return nil }

func (s stalled) Blocked() (bool, <-chan struct{}) { return false, nil }

type stalledConfirmation struct{ n int }

func (stalledConfirmation) Done() <-chan struct{} { return nil }

func (c stalledConfirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	<-ctx.Done()
	return make([]relay.Answer, c.n), context.Cause(ctx)
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

func (s *slowConfirm) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
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

// TestRelayMapsEveryProperty checks the published message against the
// contract's table, field by field, for a row with every column set and a
// minimal row.
func TestRelayMapsEveryProperty(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	topicQueue := b.amqp.DeclareQueue(t, "amq.topic", "orders.placed")
	payload := []byte{0x00, 0xff, 0xfe, '{', '}', 0x80, '\n'} // not UTF-8: must pass unchanged
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, content_type, headers)
VALUES ('order', '42', 'OrderPlaced', 'amq.topic', 'orders.placed', $1, 'application/x-test', '{"tenant":"acme","n":7,"ratio":0.25,"ok":false,"outbox_id":"spoof"}')`, payload); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', '43', 'OrderPaid', 'events', '{"id":43}')`); err != nil {
		t.Fatal(err)
	}
	type row struct {
		id          int64
		eventID, ct string
		created     time.Time
	}
	var rows []row
	res, err := b.pool.Query(ctx, `SELECT id, event_id::text, content_type, created_at FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var r row
		if err := res.Scan(&r.id, &r.eventID, &r.ct, &r.created); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	if res.Err() != nil || len(rows) != 2 {
		t.Fatalf("rows %v, %v", rows, res.Err())
	}

	stop := run(t, relay.Config{}, b.store, b.broker)
	defer stop()
	get := func(queue string) amqp.Delivery { return b.getOne(t, queue) }

	full := get(topicQueue)
	checks := []struct {
		field     string
		got, want any
	}{
		{"exchange", full.Exchange, "amq.topic"},
		{"routing key", full.RoutingKey, "orders.placed"},
		{"body", string(full.Body), string(payload)},
		{"message_id", full.MessageId, rows[0].eventID},
		{"type", full.Type, "OrderPlaced"},
		{"content_type", full.ContentType, "application/x-test"},
		{"timestamp", full.Timestamp.Unix(), rows[0].created.Unix()},
		{"delivery_mode", full.DeliveryMode, uint8(2)},
		{"headers", map[string]any(full.Headers), map[string]any{
			"tenant": "acme", "n": int64(7), "ratio": 0.25, "ok": false,
			"aggregate_type": "order", "aggregate_id": "42", "outbox_id": rows[0].id,
		}},
	}
	minimal := get("events")
	checks = append(checks, []struct {
		field     string
		got, want any
	}{
		{"NULL exchange -> RELAY_EXCHANGE", minimal.Exchange, ""},
		{"default content_type", minimal.ContentType, "application/json"},
		{"minimal message_id", minimal.MessageId, rows[1].eventID},
		{"minimal headers", map[string]any(minimal.Headers), map[string]any{"aggregate_type": "order", "aggregate_id": "43", "outbox_id": rows[1].id}},
	}...)
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %#v, want %#v", c.field, c.got, c.want)
		}
	}
}

// waitDead waits until the table has n dead rows.
func waitDead(t *testing.T, b *bundle, n int) []postgres.DeadRow {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		dead, err := b.store.Dead(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) == n {
			return dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead rows, want %d", len(dead), n)
		}
	}
}

// parkFast makes parked rows die quickly.
var parkFast = relay.Config{RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
	MaxAttempts: 3, ParkRetryMin: 20 * time.Millisecond, ParkRetryMax: 50 * time.Millisecond}

// TestRejectedRowIsParkedAndOthersFlow: a row the broker returns (no queue
// bound) is not counted as published. It is parked: rows of other
// aggregates flow on, rows of its own aggregate wait behind it, and after
// MaxAttempts it is dead with the broker's reason. Sent back with dead
// retry once a queue is bound, it is published, then the rows behind it, in
// order. (Rows already in flight behind it when it is first returned are
// delivered before it: a known limit, so the rows of its aggregate are
// written here once it is parked.)
func TestRejectedRowIsParkedAndOthersFlow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('agg', 'held0', 'Lonely', 'amq.direct', 'nobody.listens', '{}')`); err != nil {
		t.Fatal(err)
	}
	b.write(t, "behind", 20, 2) // other aggregates
	stop := run(t, parkFast, b.store, b.broker)
	defer stop()

	seen := b.delivered(t, 20) // the other aggregates flow
	dead := waitDead(t, b, 1)
	if d := dead[0]; d.Attempts != 3 || !strings.Contains(d.Reason, "312") {
		t.Fatalf("dead row %+v, want 3 attempts and a 312 NO_ROUTE reason", d)
	}
	if len(seen) != 20 {
		t.Fatalf("%d distinct messages delivered, want the 20 of other aggregates", len(seen))
	}
	b.write(t, "held", 3, 1) // agg/held0: must wait behind the dead row
	for deadline := time.Now().Add(30 * time.Second); waitDead(t, b, 1)[0].Waiting != 3; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the rows of the dead row's aggregate were not parked behind it")
		}
	}
	st, err := b.store.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Dead != 1 || st.Pending != 0 {
		t.Fatalf("status dead %d, pending %d; want 1 dead, 0 pending", st.Dead, st.Pending)
	}

	queue := b.amqp.DeclareQueue(t, "amq.direct", "nobody.listens")
	if ids, err := b.store.RetryDead(context.Background(), true, nil); err != nil || len(ids) != 1 {
		t.Fatalf("RetryDead = %v, %v", ids, err)
	}
	b.getOne(t, queue) // the retried row
	// The three rows behind it, in order (delivered checks the order).
	// Late duplicates of the other aggregates, republished after the
	// first failure, may still be queued: they are not this check's.
	b.deliveredOf(t, 3, "held0")
	waitDead(t, b, 0)
}

// TestUnmappableRowIsParked: a header number beyond a double's range passes
// the schema's check but cannot become a message; the row is parked and
// dies, its aggregate waits, others flow; dead drop lets its aggregate go
// on without it.
func TestUnmappableRowIsParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
VALUES ('agg', 'held0', 'Huge', 'events', '{}', '{"n": 1e400}')`); err != nil {
		t.Fatal(err)
	}
	b.write(t, "held", 2, 1)  // behind it
	b.write(t, "other", 5, 1) // flows
	stop := run(t, parkFast, b.store, b.broker)
	defer stop()

	if seen := b.delivered(t, 5); len(seen) != 5 {
		t.Fatalf("%d delivered, want only the 5 of the other aggregate", len(seen))
	}
	dead := waitDead(t, b, 1)
	if !strings.Contains(dead[0].Reason, "out of range") {
		t.Fatalf("reason %q, want the mapping error", dead[0].Reason)
	}
	if ids, err := b.store.DropDead(context.Background(), false, []int64{dead[0].ID}); err != nil || len(ids) != 1 {
		t.Fatalf("DropDead = %v, %v", ids, err)
	}
	seen := b.delivered(t, 2) // the two behind it go on
	if len(seen) != 2 {
		t.Fatalf("%d delivered after the drop, want 2", len(seen))
	}
}

// TestWakeUpCutsThePollShort: with polls an hour apart, a row committed
// after the first read arrives only because of the wake-up.
func TestWakeUpCutsThePollShort(t *testing.T) {
	t.Parallel()
	b := setup(t)
	wake := make(chan struct{}, 1)
	read := make(chan struct{}, 10)
	stop := run(t, relay.Config{PollInterval: time.Hour, MinPoll: time.Hour, Wake: wake},
		readSignal{Store: b.store, read: read}, b.broker)
	defer stop()
	<-read // the first read found nothing; the next poll is an hour away
	b.write(t, "a", 1, 1)
	// Keep waking: a transaction of a parallel test can hold the row back
	// from one read (the snapshot xmin is cluster-wide).
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case wake <- struct{}{}:
			case <-done:
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	b.delivered(t, 1)
}

// readSignal tells the test each time the relay has read.
type readSignal struct {
	relay.Store
	read chan struct{}
}

func (s readSignal) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	rows, err := s.Store.Read(ctx, after, b)
	select {
	case s.read <- struct{}{}:
	default:
	}
	return rows, err
}

// TestMissingExchangeRowIsParked: publishing to an exchange that does not
// exist makes the broker close the channel (404); the row is identified,
// parked and dies with that reason, while other rows flow.
func TestMissingExchangeRowIsParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('agg', 'lost0', 'Nowhere', 'no-such-exchange', 'k', '{}')`); err != nil {
		t.Fatal(err)
	}
	b.write(t, "other", 30, 3)
	stop := run(t, parkFast, b.store, b.broker)
	defer stop()
	b.delivered(t, 30)
	dead := waitDead(t, b, 1)
	if !strings.Contains(dead[0].Reason, "404") {
		t.Fatalf("reason %q, want the broker's 404", dead[0].Reason)
	}
	b.write(t, "later", 5, 1) // the pipeline still flows after the dead row
	b.delivered(t, 5)
}

// TestHeldBurstDoesNotStall: right behind a rejected row come many rows of
// its aggregate, then rows of others. The held rows are parked as fast as
// they are read, and the others arrive without waiting on them.
func TestHeldBurstDoesNotStall(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('agg', 'held0', 'Lonely', 'amq.direct', 'nobody.listens', '{}')`); err != nil {
		t.Fatal(err)
	}
	b.write(t, "held", 100, 1) // agg/held0
	b.write(t, "after", 20, 2)
	cfg := parkFast
	cfg.BatchSize = 1 // a window of two rows: only one held row can slip out
	stop := run(t, cfg, b.store, b.broker)
	defer stop()
	// One parked row a second would take over a minute; delivered gives
	// up after 30 s.
	seen := b.delivered(t, 20)
	if len(seen) > 21 {
		t.Fatalf("%d delivered, want the 20 of other aggregates (and at most the one held row in the first window)", len(seen))
	}
	if dead := waitDead(t, b, 1); dead[0].Waiting < 99 {
		t.Fatalf("%d rows wait behind the dead row, want at least 99", dead[0].Waiting)
	}
}

// TestIdleLeaderConnectsToTheBroker: with nothing to publish, the leader
// still opens its broker connection, so an outage shows before a row
// waits on it.
func TestIdleLeaderConnectsToTheBroker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stop := run(t, relay.Config{}, b.store, b.broker)
	defer stop()
	for deadline := time.Now().Add(30 * time.Second); !b.broker.Connected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the idle leader never connected to the broker")
		}
	}
}

// TestNestedHeadersAreParked: the schema checks only that headers are an
// object; a row whose header values cannot become AMQP headers is parked
// and dies with the mapping error, and the others flow.
func TestNestedHeadersAreParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
VALUES ('agg', 'nested0', 'Nested', 'events', '{}', '{"o": {"a": 1}}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
VALUES ('agg', 'x', 'E', 'events', '{}', '"not an object"')`); err == nil {
		t.Fatal("headers that are not an object were accepted at insert")
	}
	b.write(t, "other", 5, 1)
	stop := run(t, parkFast, b.store, b.broker)
	defer stop()
	if seen := b.delivered(t, 5); len(seen) != 5 {
		t.Fatalf("%d delivered, want the 5 of the other aggregate", len(seen))
	}
	if dead := waitDead(t, b, 1); !strings.Contains(dead[0].Reason, `header "o" is a JSON object`) {
		t.Fatalf("reason %q, want the mapping error", dead[0].Reason)
	}
}

// barrier holds calls until it opens: each held call first tells the test
// it arrived (on arrived, if nobody took the last notice yet).
type barrier struct {
	arrived chan struct{}
	open    chan struct{}
}

func newBarrier() *barrier {
	return &barrier{arrived: make(chan struct{}, 1), open: make(chan struct{})}
}

// hold waits until the barrier opens or ctx ends.
func (b *barrier) hold(ctx context.Context) error {
	select {
	case b.arrived <- struct{}{}:
	default:
	}
	select {
	case <-b.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gatedReads lets reads through until one returns rows, and holds every
// later one at the barrier. (An early read may find nothing: another
// test's transaction on the same server can hold the rows back for a
// moment.)
type gatedReads struct {
	relay.Store
	found atomic.Bool
	*barrier
}

func (s *gatedReads) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	if s.found.Load() {
		if err := s.hold(ctx); err != nil {
			return nil, err
		}
	}
	rows, err := s.Store.Read(ctx, after, b)
	if len(rows) > 0 {
		s.found.Store(true)
	}
	return rows, err
}

// TestSlowReadDoesNotHoldUpRecording: the next batch is read beside the
// loop, so while a read hangs, the batch already published is still
// confirmed and recorded.
func TestSlowReadDoesNotHoldUpRecording(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "slow", 10, 2)
	store := &gatedReads{Store: b.store, barrier: newBarrier()}
	recorded := make(chan int, 100)
	cfg := relay.Config{BatchSize: 10, Hooks: relay.Hooks{Recorded: func(_ relay.Position, rows int) { recorded <- rows }}}
	stop := run(t, cfg, store, b.broker)
	defer stop()
	<-store.arrived
	total := 0
	for total < 10 {
		select {
		case n := <-recorded:
			total += n
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of 10 rows recorded while the next read hung: the read holds up the loop", total)
		}
	}
	close(store.open)
	b.write(t, "after", 3, 1)
	b.deliveredOf(t, 3, "after0")
}

// heldRecords holds every position write at the barrier.
type heldRecords struct {
	relay.Store
	*barrier
}

func (s *heldRecords) Record(ctx context.Context, pos relay.Position) error {
	if err := s.hold(ctx); err != nil {
		return err
	}
	return s.Store.Record(ctx, pos)
}

// countingPublisher counts the messages handed to the broker.
type countingPublisher struct {
	relay.Publisher
	sent atomic.Int64
}

func (c *countingPublisher) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	c.sent.Add(int64(len(msgs)))
	return c.Publisher.Publish(ctx, msgs)
}

// TestWindowCountsRowsAwaitingTheirPositionWrite: confirmed rows whose
// position write has not finished still count against the window, so
// however slow the write, at most a window of rows is published and not
// recorded: what a crash would publish again.
func TestWindowCountsRowsAwaitingTheirPositionWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, "held", 100, 5)
	store := &heldRecords{Store: b.store, barrier: newBarrier()}
	pub := &countingPublisher{Publisher: b.broker}
	stop := run(t, relay.Config{BatchSize: 10}, store, pub)
	defer stop()
	<-store.arrived
	time.Sleep(500 * time.Millisecond) // room for the relay to overrun, if it would
	if n := pub.sent.Load(); n > 20 {
		t.Fatalf("%d messages published while the first position write hung, want at most the window of 20", n)
	}
	close(store.open)
	if seen := b.deliveredOf(t, 100, ""); len(seen) != 100 {
		t.Fatalf("%d delivered, want 100", len(seen))
	}
}
