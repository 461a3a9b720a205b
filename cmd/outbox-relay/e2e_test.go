package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/internal/ledger"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

const batchSize = 100

// window is the most rows in flight, and so the duplicate bound per fault.
const window = 2 * batchSize

// rig is one test's servers, a stream of writes and a consumer checking them.
type rig struct {
	env     []string
	dbURL   string
	amqpURL string // the broker the relay publishes to, and check's marker
	pool    *pgxpool.Pool
	broker  *testenv.Broker
	ledger  *ledger.Ledger
	stopW   context.CancelFunc
	writers sync.WaitGroup // the writers, which stopW stops
	wg      sync.WaitGroup // the consumer
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigOn(t, testenv.Database(t))
}

// newRigOn is newRig on a given database.
func newRigOn(t *testing.T, dbURL string) *rig {
	t.Helper()
	r := &rig{dbURL: dbURL, broker: testenv.NewBroker(t), ledger: ledger.New()}
	r.amqpURL = r.broker.URL
	queue := r.broker.DeclareQueue(t, "", "events")
	r.pool = newPool(t, r.dbURL)
	r.env = []string{"RELAY_DATABASE_URL=" + r.dbURL, "RELAY_AMQP_URL=" + r.broker.URL,
		"RELAY_BATCH_SIZE=100", "RELAY_SHUTDOWN_TIMEOUT=20s", "RELAY_POLL_INTERVAL=20ms"}

	ctx, cancel := context.WithCancel(context.Background())
	c := &ledger.Consumer{URL: r.broker.URL, Queue: queue, Ledger: r.ledger}
	r.wg.Go(func() { c.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		r.close()
	})
	return r
}

// newRigOnNode is a rig on a broker node of the test's own: queue "events"
// on its default vhost, the relay publishing through amqpURL, the consumer
// reading through consumerURL (with observe, if set, at every delivery).
func newRigOnNode(t *testing.T, dbURL, amqpURL, consumerURL string, observe func(), env ...string) *rig {
	t.Helper()
	declare(t, amqpURL, "events")
	r := &rig{dbURL: dbURL, amqpURL: amqpURL, ledger: ledger.New(), pool: newPool(t, dbURL)}
	r.env = append([]string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + amqpURL,
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=20ms"}, env...)
	ctx, cancel := context.WithCancel(context.Background())
	c := &ledger.Consumer{URL: consumerURL, Queue: "events", Ledger: r.ledger, Observe: observe}
	r.wg.Go(func() { c.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		r.close()
	})
	return r
}

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// write starts writers that commit (and sometimes roll back) until
// stopWrites.
func (r *rig) write(t *testing.T, writers int) { r.writeThrough(t, writers, false) }

// writeThrough is write, with writers that ride out database outages when
// outages is set.
func (r *rig) writeThrough(t *testing.T, writers int, outages bool) {
	ctx, cancel := context.WithCancel(context.Background())
	r.stopW = cancel
	for i := range writers {
		w := &ledger.Writer{Pool: r.pool, Ledger: r.ledger, Name: "w" + string(rune('a'+i)), Aggregates: 3,
			PerTx: 1 + i%3, Rollback: 0.1, Pause: 2 * time.Millisecond, Outages: outages}
		r.writers.Go(func() {
			if err := w.Run(ctx); err != nil {
				t.Errorf("writer: %v", err)
			}
		})
	}
}

// stopWrites stops the writers and waits for them: a commit in flight is
// in the ledger when it returns.
func (r *rig) stopWrites() {
	r.stopW()
	r.writers.Wait()
}

// close stops the writers, if the test did not get to it (a failure), and
// waits for every goroutine of the rig.
func (r *rig) close() {
	if r.stopW != nil {
		r.stopW()
	}
	r.writers.Wait()
	r.wg.Wait()
}

// wrote waits until the writers have committed n more events: writes
// after a fault, where the test wants some.
func (r *rig) wrote(t *testing.T, n int) {
	t.Helper()
	want := r.ledger.CommittedCount() + n
	eventually(t, fmt.Sprintf("%d more events committed", n), func() bool { return r.ledger.CommittedCount() >= want })
}

// drained waits until every committed event was delivered at least once.
// Duplicates may still be on their way: check counts them.
func (r *rig) drained(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for r.ledger.Distinct() < r.ledger.CommittedCount() {
		if time.Now().After(deadline) {
			t.Fatalf("not drained: %s; %s", r.ledger.Report(), r.where(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settle waits until the consumer has taken everything the relays put in
// the queue. Once every relay has stopped, a marker sent to the queue now
// lines up behind all of it (each relay's messages were queued before the
// broker confirmed them, or before its connection closed), and the
// consumer takes the queue in order: when the marker is in the ledger, so
// is every duplicate, however late. The marker counts as an event
// committed and delivered.
func (r *rig) settle(t *testing.T) {
	t.Helper()
	id := fmt.Sprintf("settle-%x", rand.Uint64())
	body, err := json.Marshal(ledger.Payload{Agg: id, Seq: 0})
	if err != nil {
		t.Fatal(err)
	}
	r.ledger.Committed(id, ledger.Payload{Agg: id, Seq: 0})
	conn, err := amqp.Dial(r.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", "events", true, false,
		amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, ContentType: "application/json", Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(t.Context()); err != nil || !ok {
		t.Fatalf("the broker did not take the marker (ack %v, %v)", ok, err)
	}
	eventually(t, "the consumer takes the marker sent behind the relays' messages", func() bool {
		return !slices.Contains(r.ledger.Lost(r.ledger.CommittedCount()), id)
	})
}

// where tells whether undelivered events are still in the outbox or in the
// queue, to tell a relay fault from a consumer fault.
func (r *rig) where(t *testing.T) string {
	var pending int
	if err := r.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox o, outbox_relay_position p
		WHERE p.outbox_table = 'public.outbox' AND (o.txid, o.id) > (p.txid, p.id)`).Scan(&pending); err != nil {
		return err.Error()
	}
	ch, err := r.broker.Dial(t).Channel()
	if err != nil {
		return err.Error()
	}
	q, err := ch.QueueDeclarePassive("events", true, false, false, false, nil)
	if err != nil {
		return err.Error()
	}
	var inTable, total int
	var pos string
	lost := r.ledger.Lost(50)
	var where string
	if err := r.pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM outbox WHERE event_id::text = ANY($1)),
		(SELECT count(*) FROM outbox), (SELECT txid::text || '/' || id FROM outbox_relay_position WHERE outbox_table = 'public.outbox'),
		(SELECT string_agg(txid::text || '/' || id, ' ' ORDER BY txid, id) FROM outbox WHERE event_id::text = ANY($1))`, lost).Scan(&inTable, &total, &pos, &where); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("outbox rows after the position %s: %d (of %d; %d of %d lost sampled are in the table, at %s); queue: %d ready, %d consumers",
		pos, pending, total, inTable, len(lost), where, q.Messages, q.Consumers)
}

// check judges what was delivered, once every relay has stopped: nothing
// lost, unexpected or out of order, and at most maxDuplicates duplicates.
func (r *rig) check(t *testing.T, maxDuplicates int) ledger.Report {
	t.Helper()
	r.settle(t)
	rep := r.ledger.Report()
	t.Logf("%s", rep)
	if !rep.OK() {
		t.Fatalf("guarantees broken: %s", rep)
	}
	if rep.Committed == 0 {
		t.Fatal("nothing was committed: the test tested nothing")
	}
	if rep.Duplicates > maxDuplicates {
		t.Fatalf("%d duplicates, more than the bound %d", rep.Duplicates, maxDuplicates)
	}
	return rep
}

// relayStatus runs outbox-relay status --json on the database.
func relayStatus(t *testing.T, dbURL string) postgres.Status {
	t.Helper()
	code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + dbURL}, "status", "--json")
	var st postgres.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: exit %d: %s", code, out)
	}
	return st
}

// stopClean stops a relay with SIGTERM and expects exit 0.
func stopClean(t *testing.T, p *proc) {
	t.Helper()
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

func TestSIGKILLLosesNothing(t *testing.T) { everySource(t, testSIGKILLLosesNothing) }

func testSIGKILLLosesNothing(t *testing.T, source string) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, source)
	r.write(t, 4)
	const kills = 20
	holder := ""
	for range kills {
		p := start(t, r.env)
		// Each process has a name of its own: a new name in the lease is
		// this one leading, so the kill lands while it publishes.
		holder = r.leader(t, holder, 30*time.Second)
		time.Sleep(time.Duration(rand.N(400)) * time.Millisecond) // a random moment
		p.signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
	}
	r.stopWrites()
	p := start(t, r.env)
	r.drained(t)
	stopClean(t, p)
	rep := r.check(t, kills*window)
	t.Logf("SIGKILL x%d: %.1f duplicates per kill (bound %d)", kills, float64(rep.Duplicates)/kills, window)
}

func TestSIGTERMLeavesNoDuplicates(t *testing.T) { everySource(t, testSIGTERMLeavesNoDuplicates) }

func testSIGTERMLeavesNoDuplicates(t *testing.T, source string) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, source)
	r.write(t, 4)
	holder := ""
	for range 8 {
		p := start(t, r.env)
		holder = r.leader(t, holder, 30*time.Second)
		time.Sleep(time.Duration(rand.N(400)) * time.Millisecond)
		stopClean(t, p)
	}
	r.stopWrites()
	p := start(t, r.env)
	r.drained(t)
	stopClean(t, p)
	r.check(t, 0)
}

func TestRecoversFromClosedConnectionsAndTerminatedBackends(t *testing.T) {
	everySource(t, testRecoversFromClosedConnectionsAndTerminatedBackends)
}

func testRecoversFromClosedConnectionsAndTerminatedBackends(t *testing.T, source string) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, source)
	r.write(t, 4)
	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })

	// A fault lands only when the relay has a connection to hit: right
	// after one, it may still be reconnecting, and the broker's connection
	// list lags. Try until 6 have landed, not a fixed number of times.
	faults := 0
	for i := 0; faults < 6 && i < 60; i++ {
		time.Sleep(time.Duration(100+rand.N(300)) * time.Millisecond)
		if i%2 == 0 {
			if n := r.broker.CloseConnections(t, "outbox-relay"); n > 0 {
				faults++
			}
			continue
		}
		var n int
		err := r.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'outbox-relay%'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			faults++
		}
	}
	if faults < 6 {
		t.Fatalf("only %d faults landed in 60 attempts", faults)
	}
	r.stopWrites()
	r.drained(t)
	select {
	case <-p.done:
		t.Fatalf("the relay exited during the faults: %v", p.err)
	default:
	}
	recovered(t, addr)
	stopClean(t, p)
	r.check(t, faults*window)
}

// recovered checks, from a relay's metrics, that the faults it went through
// reached it and that it leads again: a fault fails a round (a broker or
// database failure), or ends the session that holds the replica's name (a
// lost lease, which it takes back); drained has shown that publishing
// recovered.
func recovered(t *testing.T, addr string) {
	t.Helper()
	failures := 0.0
	for _, reason := range []string{"broker", "database", "lease"} {
		failures += max(0, metric(addr, `outbox_relay_publish_failures_total{reason="`+reason+`"}`))
	}
	if failures == 0 {
		t.Errorf("no broker, database or lease failure was counted: the faults did not reach the relay")
	}
	if l := metric(addr, "outbox_relay_leader"); l != 1 {
		t.Errorf("outbox_relay_leader = %v after the faults, want 1", l)
	}
}

// TestSurvivesPostgresCrashRestarts is RELIABILITY entry 14: the database
// restarts without a shutdown checkpoint, three times, under load.
func TestSurvivesPostgresCrashRestarts(t *testing.T) {
	everySource(t, testSurvivesPostgresCrashRestarts)
}

func testSurvivesPostgresCrashRestarts(t *testing.T, source string) {
	t.Parallel()
	srv := testenv.NewPostgresServer(t)
	r := newRigOn(t, srv.Database(t))
	r.useSource(t, source)
	r.writeThrough(t, 4, true)
	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })
	const restarts = 3
	for range restarts {
		time.Sleep(time.Duration(200+rand.N(300)) * time.Millisecond)
		srv.Restart(t)
	}
	r.wrote(t, 100) // writes after the last restart, too
	r.stopWrites()
	r.drained(t)
	select {
	case <-p.done:
		t.Fatalf("the relay exited during the restarts: %v", p.err)
	default:
	}
	recovered(t, addr)
	stopClean(t, p)
	r.check(t, restarts*window)
}

func TestSecondSignalAborts(t *testing.T) {
	t.Parallel()
	dbURL := withPassword(t, testenv.Database(t), "pg-s3cret")
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(context.Background(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload) VALUES ('a','1','t','k','x')`); err != nil {
		t.Fatal(err)
	}
	// A broker that accepts connections and never answers: the relay hangs
	// in the AMQP handshake until its dial timeout.
	var conns sync.WaitGroup
	defer conns.Wait() // after ln.Close, which ends the accept loop
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed := make(chan struct{}, 10)
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialed <- struct{}{}
			conns.Go(func() {
				defer c.Close()
				_, _ = c.Read(make([]byte, 1024))
				time.Sleep(3 * time.Second)
			})
		}
	})
	env := []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=amqp://guest:mq-s3cret@" + ln.Addr().String() + "/"}

	p := start(t, env)
	select {
	case <-dialed: // the relay is in the handshake now
	case <-time.After(30 * time.Second):
		t.Fatal("the relay never connected to the broker")
	}
	p.signal(syscall.SIGTERM)
	p.waitLog("stopping", 10*time.Second)
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 1 {
		t.Fatalf("exit %d after two signals, want 1", code)
	}
	if !strings.Contains(p.log(), "second signal") {
		t.Fatalf("abort not logged")
	}

	// One signal waits for the broker attempt to end, then stops cleanly:
	// nothing was in flight.
	p = start(t, env)
	select {
	case <-dialed:
	case <-time.After(30 * time.Second):
		t.Fatal("the relay never connected to the broker")
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after one signal, want 0", code)
	}
	if strings.Contains(p.log(), "s3cret") {
		t.Fatalf("the log shows a password:\n%s", p.log())
	}
}

func withPassword(t *testing.T, raw, password string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

func TestMigrateAndStatus(t *testing.T) {
	t.Parallel()
	dbURL := withPassword(t, testenv.EmptyDatabase(t), "pg-s3cret")
	env := []string{"RELAY_DATABASE_URL=" + dbURL}
	for range 2 {
		if code, out := runCmd(t, env, "migrate"); code != 0 {
			t.Fatalf("migrate: exit %d: %s", code, out)
		}
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', '42', 'OrderPlaced', 'orders.placed', '{"id":42}'), ('order', '43', 'OrderPlaced', 'orders.placed', '{"id":43}')`); err != nil {
		t.Fatal(err)
	}
	code, out := runCmd(t, env, "status", "--json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, out)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not one JSON object: %v: %s", err, out)
	}
	if st["pending"] != 2.0 || st["dead"] != 0.0 || st["oldest_pending_age_seconds"].(float64) <= 0 {
		t.Fatalf("status %v, want pending 2, dead 0 and a positive age", st)
	}
	if strings.Contains(out, "s3cret") {
		t.Fatalf("status shows the password: %s", out)
	}
	if code, out := runCmd(t, env, "status"); code != 0 || !strings.Contains(out, "pending               2") {
		t.Fatalf("status: exit %d: %s", code, out)
	}

	// A schema-qualified table: migrate creates it in that schema.
	if _, err := pool.Exec(context.Background(), `CREATE SCHEMA svc`); err != nil {
		t.Fatal(err)
	}
	if code, out := runCmd(t, append(env, "RELAY_TABLE=svc.outbox"), "migrate"); code != 0 {
		t.Fatalf("migrate svc.outbox: exit %d: %s", code, out)
	}
	var exists bool
	if err := pool.QueryRow(context.Background(), `SELECT to_regclass('svc.outbox') IS NOT NULL AND to_regclass('svc.outbox_relay_position') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("svc.outbox not created (%v)", err)
	}
}

// TestSchemaAppliesTwiceWithPsql runs schema.sql the way teams will.
func TestSchemaAppliesTwiceWithPsql(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not found; it comes with the postgresql package that make test installs")
	}
	dbURL := testenv.EmptyDatabase(t)
	for i := range 2 {
		cmd := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbURL, "-f", "-")
		cmd.Stdin = strings.NewReader(outboxrelay.Schema)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, out)
		}
	}
	cmd := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbURL, "-c",
		`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload) VALUES ('order', '42', 'OrderPlaced', 'orders.placed', '{"id":42}')`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the minimal insert from the spec failed: %v\n%s", err, out)
	}
	// Every object the schema creates is commented.
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rows, err := pool.Query(context.Background(), `
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT c.relname || '.' || a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = 'public' AND c.relkind = 'r' AND col_description(c.oid, a.attnum) IS NULL
UNION ALL
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'public' AND obj_description(p.oid, 'pg_proc') IS NULL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		t.Errorf("%s has no comment", name)
	}
}

// TestWaitsForUnreachableServers: a relay whose database and broker are
// down keeps retrying, says so, and still stops cleanly.
func TestWaitsForUnreachableServers(t *testing.T) {
	t.Parallel()
	db, attempts := refusingPostgres(t)
	p := start(t, []string{"RELAY_DATABASE_URL=postgres://relay:pg-s3cret@" + db + "/db?connect_timeout=1&sslmode=disable",
		"RELAY_AMQP_URL=amqp://relay:mq-s3cret@127.0.0.1:1/"})
	p.waitLog("cannot start yet; retrying", 30*time.Second) // what the operator is told
	// It goes on retrying: the store's attempts keep coming, and the
	// process is still there after several of them.
	eventually(t, "5 attempts to start on the database", func() bool {
		select {
		case <-p.done:
			t.Fatalf("the relay exited while the database was down (after %d attempts): %v", attempts("outbox-relay"), p.err)
		default:
		}
		return attempts("outbox-relay") >= 5
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if strings.Contains(p.log(), "s3cret") {
		t.Fatalf("the log shows a password:\n%s", p.log())
	}
}

// refusingPostgres listens as a PostgreSQL server that is down would, if it
// still let clients say who they are: it reads each client's startup
// message, counts it by the application_name it gives, and hangs up. It
// returns the address and the count of attempts so far by application name.
func refusingPostgres(t *testing.T) (addr string, attempts func(app string) int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var conns sync.WaitGroup
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if app, ok := startupApp(c); ok {
					mu.Lock()
					seen[app]++
					mu.Unlock()
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Wait()
	})
	return ln.Addr().String(), func(app string) int {
		mu.Lock()
		defer mu.Unlock()
		return seen[app]
	}
}

// startupApp reads a PostgreSQL client's startup message from c, declining
// encryption if it asks for it first, and returns its application_name.
func startupApp(c net.Conn) (string, bool) {
	for {
		var head [8]byte // length (itself included), then the protocol code
		if _, err := io.ReadFull(c, head[:]); err != nil {
			return "", false
		}
		n := binary.BigEndian.Uint32(head[:4])
		if n < 8 || n > 10000 {
			return "", false
		}
		body := make([]byte, n-8)
		if _, err := io.ReadFull(c, body); err != nil {
			return "", false
		}
		switch binary.BigEndian.Uint32(head[4:]) {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest: not here
			if _, err := c.Write([]byte("N")); err != nil {
				return "", false
			}
			continue
		}
		params := strings.Split(string(body), "\x00") // name, value, ..., then two empty strings
		for i := 0; i+1 < len(params); i += 2 {
			if params[i] == "application_name" {
				return params[i+1], true
			}
		}
		return "", true
	}
}

// settledPosition waits until no running transaction is recorded beside
// the table's position. The poll source reads past running transactions,
// but the position, below which replay and retention take rows as
// published, waits at the oldest of them, and tests beside this one run
// transactions on the same server (one holds a transaction open for the
// length of its test).
func settledPosition(t *testing.T, env []string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		code, out := runCmd(t, env, "status", "--json")
		var st postgres.Status
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.OpenTransactions == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status --json: exit %d, %s; want no running transaction beside the position within 3 minutes", code, out)
		}
	}
}
