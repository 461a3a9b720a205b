package inbox

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// Names in each test's own vhost: the work queue dead-letters to the
// fanout exchange dlx, which routes to the queue dead.
const (
	workQueue = "work"
	deadQueue = "dead"
	dlx       = "dlx"
)

// waitTimeout bounds every wait for a message; reaching it fails the test.
const waitTimeout = 30 * time.Second

// bundle is what most tests need: a database with the schema and a table
// of effects, a vhost with a work queue and its dead-letter queue, and a
// channel to publish and inspect with.
type bundle struct {
	dbURL  string
	pool   *pgxpool.Pool
	broker *testenv.Broker
	conn   *amqp.Connection
	ch     *amqp.Channel
}

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{dbURL: testenv.Database(t), broker: testenv.NewBroker(t)}
	pool, err := pgxpool.New(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b.pool = pool
	// effects has no unique constraint, so a handler that ran twice shows
	// as two rows.
	b.exec(t, `CREATE TABLE effects (message_id uuid NOT NULL, body text NOT NULL)`)

	b.conn = b.broker.Dial(t)
	b.ch = b.channel(t)
	if err := b.ch.ExchangeDeclare(dlx, "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name string
		args amqp.Table
	}{
		{deadQueue, nil},
		{workQueue, amqp.Table{"x-dead-letter-exchange": dlx}},
	} {
		if _, err := b.ch.QueueDeclare(q.name, true, false, false, false, q.args); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.ch.QueueBind(deadQueue, "", dlx, false, nil); err != nil {
		t.Fatal(err)
	}
	return b
}

// channel opens a channel on the bundle's connection.
func (b *bundle) channel(t *testing.T) *amqp.Channel {
	t.Helper()
	ch, err := b.conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

func (b *bundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// count returns the single integer that query returns.
func (b *bundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// effects is how many times handlers applied the effect of message id.
func (b *bundle) effects(t *testing.T, id string) int {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM effects WHERE message_id = $1::uuid`, id)
}

// inboxRows is how many inbox and attempts rows exist for message id.
func (b *bundle) inboxRows(t *testing.T, id string) (processed, attempts int) {
	t.Helper()
	processed = b.count(t, `SELECT count(*) FROM inbox WHERE message_id = $1::uuid`, id)
	attempts = b.count(t, `SELECT count(*) FROM inbox_attempts WHERE message_id = $1::uuid`, id)
	return processed, attempts
}

// publish sends a persistent message to the work queue.
func (b *bundle) publish(t *testing.T, msg amqp.Publishing) {
	t.Helper()
	msg.DeliveryMode = amqp.Persistent
	if err := b.ch.PublishWithContext(context.Background(), "", workQueue, false, false, msg); err != nil {
		t.Fatal(err)
	}
}

// consume opens a channel that consumes queue with a prefetch of one, so a
// requeued message is the next delivery, and returns its deliveries and
// the channel (for the test to close).
func (b *bundle) consume(t *testing.T, queue string) (<-chan amqp.Delivery, *amqp.Channel) {
	t.Helper()
	ch := b.channel(t)
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return deliveries, ch
}

// ready is the number of messages ready in queue. Close the consuming
// channel first: the broker handles a channel's acks before its close, and
// the close hands back whatever was not acked.
func (b *bundle) ready(t *testing.T, queue string) int {
	t.Helper()
	q, err := b.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// next returns the next delivery, failing the test after waitTimeout.
func next(t *testing.T, deliveries <-chan amqp.Delivery) amqp.Delivery {
	t.Helper()
	select {
	case d, ok := <-deliveries:
		if !ok {
			t.Fatal("deliveries closed")
		}
		return d
	case <-time.After(waitTimeout):
		t.Fatalf("no delivery within %v", waitTimeout)
	}
	panic("unreachable")
}

// newID returns a random UUID in canonical form.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// recorder is a handler that applies the effect (a row in effects) and
// remembers every message it saw. fail, if set, decides per call whether
// the attempt fails after applying the effect (so that only the rollback
// can undo it).
type recorder struct {
	mu   sync.Mutex
	seen []Message
	fail func(msg Message) error
}

func (r *recorder) handle(ctx context.Context, tx pgx.Tx, msg Message) error {
	r.mu.Lock()
	r.seen = append(r.seen, msg)
	fail := r.fail
	r.mu.Unlock()
	if _, err := tx.Exec(ctx, `INSERT INTO effects (message_id, body) VALUES ($1, $2)`, msg.ID, string(msg.Body)); err != nil {
		return err
	}
	if fail != nil {
		return fail(msg)
	}
	return nil
}

func (r *recorder) calls() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.seen...)
}

// newInbox returns an Inbox on the bundle's pool for consumer "billing"
// with handler h, no backoff, and cfg's other fields.
func (b *bundle) newInbox(t *testing.T, h Handler, cfg Config) *Inbox {
	t.Helper()
	if cfg.Consumer == "" {
		cfg.Consumer = "billing"
	}
	cfg.Handler = h
	if cfg.Backoff == nil {
		cfg.Backoff = func(int) time.Duration { return 0 }
	}
	in, err := New(b.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in
}
