package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/ledger"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// insertPoison inserts, on its own transaction, a row of aggregate
// poison/<agg> that the broker will refuse: unroutable (exchange amq.direct,
// routing key nobody) or to an exchange that does not exist.
func (r *rig) insertPoison(t *testing.T, agg string, missingExchange bool) {
	t.Helper()
	exchange := "amq.direct"
	if missingExchange {
		exchange = "no-such-exchange"
	}
	if _, err := r.pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('poison', $1, 'Poison', $2, 'nobody', '{}')`, agg, exchange); err != nil {
		t.Fatal(err)
	}
}

// deadRows returns the dead rows of the outbox, by id, with their reasons.
func (r *rig) deadRows(t *testing.T) map[int64]string {
	t.Helper()
	rows, err := r.pool.Query(context.Background(), `SELECT id, coalesce(last_error, '') FROM outbox_relay_parked WHERE dead AND NOT dropped`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var reason string
		if err := rows.Scan(&id, &reason); err != nil {
			t.Fatal(err)
		}
		out[id] = reason
	}
	return out
}

// TestRejectedRowsTouchNoOtherRow: 20 rows the broker refuses (10
// unroutable, 10 to a missing exchange) among steady good traffic. The
// good rows of other aggregates are delivered exactly once, the bad ones
// end dead with the broker's reason, and the relay never reconnects
// because of them.
func TestRejectedRowsTouchNoOtherRow(t *testing.T) { everySource(t, testRejectedRowsTouchNoOtherRow) }

func testRejectedRowsTouchNoOtherRow(t *testing.T, source string) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, source)
	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr, "RELAY_MAX_ATTEMPTS=2"))
	r.write(t, 4)
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })
	firstBad := time.Now()
	for i := range 20 {
		time.Sleep(50 * time.Millisecond)
		r.insertPoison(t, strconv.Itoa(i), i%2 == 1)
	}
	r.wrote(t, 100) // good rows after the last bad one, too
	r.stopWrites()
	r.drained(t)
	eventually(t, "the 20 rejected rows are dead", func() bool { return len(r.deadRows(t)) == 20 })
	for id, reason := range r.deadRows(t) {
		if !strings.Contains(reason, "312 NO_ROUTE") && !strings.Contains(reason, "exchange does not exist") {
			t.Errorf("dead row %d: reason %q, want the broker's", id, reason)
		}
	}
	if n := metric(addr, `outbox_relay_publish_failures_total{reason="broker"}`); n != 0 {
		t.Errorf("%v broker failures: a rejected row cost a connection", n)
	}
	r.oneConnectionSince(t, firstBad)
	stopClean(t, p)
	r.check(t, 0) // exactly once: no duplicate of any good row
}

// oneConnectionSince checks that the relay has one connection to the
// broker, opened no later than since: it did not reconnect after. Every bad
// row is dead by now and the good rows written after them are delivered,
// so a connection a bad row cost shows in the list, unless it came within
// the management API's lag (a second or more on a loaded machine: see
// testenv.Broker.CloseConnections) before this look; the broker failures
// counter, checked beside it, has no lag. The list may also lag the
// relay's first connection: it is read until it names one.
func (r *rig) oneConnectionSince(t *testing.T, since time.Time) {
	t.Helper()
	var conns []testenv.Connection
	eventually(t, "the management API lists the relay's connection", func() bool {
		conns = r.broker.Connections(t, "outbox-relay")
		return len(conns) > 0
	})
	if len(conns) != 1 || conns[0].ConnectedAt.After(since) {
		t.Errorf("the relay's broker connections %+v, want one opened before %s", conns, since.Format(time.StampMilli))
	}
}

// overLong lists rows no AMQP frame can carry, each with what its dead
// reason must say.
var overLong = []struct {
	name, insert, reason string
}{
	{"routing key", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload) VALUES ('bad', 'rk', 'E', repeat('k', 300), '{}')`, "routing key is 300 bytes"},
	{"exchange", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload) VALUES ('bad', 'ex', 'E', repeat('x', 300), 'events', '{}')`, "exchange is 300 bytes"},
	{"event type", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload) VALUES ('bad', 'et', repeat('E', 300), 'events', '{}')`, "event type (AMQP type) is 300 bytes"},
	{"content type", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, content_type) VALUES ('bad', 'ct', 'E', 'events', '{}', repeat('c', 300))`, "content type is 300 bytes"},
	{"header name", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers) VALUES ('bad', 'hn', 'E', 'events', '{}', jsonb_build_object(repeat('h', 300), 1))`, "header name"},
	{"header value", `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers) VALUES ('bad', 'hv', 'E', 'events', '{}', jsonb_build_object('big', repeat('v', 200000)))`, "frame size"},
}

// TestRowsAMQPCannotCarryAreDead is finding 1 of the safety review: a row
// with a field AMQP cannot carry, between good rows, used to tear the
// connection down on every retry and stop the whole table. Each such row is
// dead at once with its reason, before it is sent; every good row is
// delivered; the relay keeps one connection.
func TestRowsAMQPCannotCarryAreDead(t *testing.T) { everySource(t, testRowsAMQPCannotCarryAreDead) }

func testRowsAMQPCannotCarryAreDead(t *testing.T, source string) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, source)
	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	r.write(t, 2)
	eventually(t, "the relay connects to the broker", func() bool { return metric(addr, "outbox_relay_broker_up") == 1 })
	firstBad := time.Now()
	for _, c := range overLong {
		time.Sleep(50 * time.Millisecond)
		if _, err := r.pool.Exec(context.Background(), c.insert); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	r.wrote(t, 100) // good rows after the last bad one, too
	r.stopWrites()
	r.drained(t)
	eventually(t, "every over-long row is dead", func() bool { return len(r.deadRows(t)) == len(overLong) })
	dead := strings.Join(mapValues(r.deadRows(t)), "\n")
	for _, c := range overLong {
		if !strings.Contains(dead, c.reason) {
			t.Errorf("%s: no dead row says %q:\n%s", c.name, c.reason, dead)
		}
	}
	if n := metric(addr, `outbox_relay_publish_failures_total{reason="broker"}`); n != 0 {
		t.Errorf("%v broker failures: a row cost a connection", n)
	}
	r.oneConnectionSince(t, firstBad)
	stopClean(t, p)
	r.check(t, 0)
}

func mapValues(m map[int64]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestDeadRowPolicies: an aggregate's later rows wait behind its dead row
// under RELAY_DEAD_ROWS=hold (the default) until an operator drops it, and
// go on under skip; either way the first message after the gap names the
// dead row's event in outbox_skipped, and a dropped row is never replayed.
func TestDeadRowPolicies(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"hold", "skip"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			ctx := context.Background()
			env := append(r.env, "RELAY_MAX_ATTEMPTS=1")
			if policy == "skip" {
				env = append(env, "RELAY_DEAD_ROWS=skip")
			}
			queue := r.broker.DeclareQueue(t, "amq.topic", "chain")
			// Row 1 of the aggregate is unroutable; once it is dead, rows 2
			// and 3 follow. (Rows sent in the same window as a row the
			// broker refuses are delivered before it: see Limitations.)
			var deadEvent string
			if err := r.pool.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('chain', '1', 'First', 'amq.topic', 'nobody', '1') RETURNING event_id::text`).Scan(&deadEvent); err != nil {
				t.Fatal(err)
			}
			p := start(t, env)
			eventually(t, "the first row is dead", func() bool { return len(r.deadRows(t)) == 1 })
			for i := 2; i <= 3; i++ {
				if _, err := r.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('chain', '1', 'Next', 'amq.topic', 'chain', $1)`, []byte(strconv.Itoa(i))); err != nil {
					t.Fatal(err)
				}
			}
			if policy == "hold" {
				// The followers wait: held behind the dead row.
				eventually(t, "the followers are held", func() bool {
					var n int
					_ = r.pool.QueryRow(ctx, `SELECT count(*) FROM outbox_relay_parked WHERE NOT dead`).Scan(&n)
					return n == 2
				})
				dbEnv := []string{"RELAY_DATABASE_URL=" + r.dbURL}
				if code, out := runCmd(t, dbEnv, "dead", "list"); code != 0 || !strings.Contains(out, "blocks its aggregate: 2 rows wait behind it") {
					t.Errorf("dead list: exit %d, %s; want the row blocking its aggregate's 2 rows", code, out)
				}
				if code, out := runCmd(t, dbEnv, "status"); code != 0 || !strings.Contains(out, "1 in 1 aggregates, whose later rows wait") {
					t.Errorf("status: exit %d, %s; want the blocked aggregate", code, out)
				}
				code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + r.dbURL}, "dead", "drop", "--all")
				if code != 0 {
					t.Fatalf("dead drop: exit %d: %s", code, out)
				}
			}
			got := getN(t, r.broker.Dial(t), queue, 2)
			if string(got[0].Body) != "2" || string(got[1].Body) != "3" {
				t.Fatalf("followers arrived as %q, %q; want 2 then 3", got[0].Body, got[1].Body)
			}
			if s, _ := got[0].Headers["outbox_skipped"].(string); s != deadEvent {
				t.Errorf("first follower's outbox_skipped = %q, want the dead row's event %s", s, deadEvent)
			}
			if _, ok := got[1].Headers["outbox_skipped"]; ok {
				t.Errorf("the second follower names the gap again: %v", got[1].Headers)
			}
			stopClean(t, p)
			if policy == "skip" {
				code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + r.dbURL, "RELAY_DEAD_ROWS=skip"}, "dead", "list")
				if code != 0 || !strings.Contains(out, "skipped: its aggregate goes on without it") {
					t.Errorf("dead list under skip: exit %d, %s", code, out)
				}
			}
			if policy == "hold" {
				code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + r.dbURL, "RELAY_AMQP_URL=" + r.broker.URL},
					"replay", "--aggregate-type", "chain", "--dry-run")
				if code != 0 || strings.Contains(out, "First") {
					t.Errorf("replay after the drop: exit %d, %s; want the dropped row left out", code, out)
				}
			}
		})
	}
}

// getN takes n messages from queue, waiting up to 30 s.
func getN(t *testing.T, conn *amqp.Connection, queue string, n int) []amqp.Delivery {
	t.Helper()
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var out []amqp.Delivery
	for deadline := time.Now().Add(30 * time.Second); len(out) < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived on %s", len(out), n, queue)
		}
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			out = append(out, d)
		}
	}
	return out
}

// TestHugeRowIsDeadWithoutBeingLoaded is finding 4 of the safety review:
// memory was bounded by rows, not bytes (one 150 MB row took 805 MB). A
// row whose payload is larger than RELAY_MAX_PAYLOAD_BYTES is dead at
// once and never loaded; rows of a few MB each go a few at a time; the
// relay's peak resident memory stays small.
func TestHugeRowIsDeadWithoutBeingLoaded(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	if _, err := r.pool.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('huge', '1', 'Huge', 'events', convert_to(repeat('x', 150000000), 'UTF8'))`); err != nil {
		t.Fatal(err)
	}
	for i := range 4 { // 4 MB each, under the limit: published one or two at a time
		body, _ := json.Marshal(map[string]any{"agg": "big", "seq": i, "pad": strings.Repeat("p", 4_000_000)})
		var id string
		if err := r.pool.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
			VALUES ('ledger', 'big', 'Big', 'events', $1) RETURNING event_id::text`, body).Scan(&id); err != nil {
			t.Fatal(err)
		}
		r.ledger.Committed(id, ledger.Payload{Agg: "big", Seq: i})
	}
	p := start(t, r.env)
	eventually(t, "the huge row is dead", func() bool { return len(r.deadRows(t)) == 1 })
	r.drained(t)
	dead := mapValues(r.deadRows(t))[0]
	if !strings.Contains(dead, "150000000 bytes") || !strings.Contains(dead, "RELAY_MAX_PAYLOAD_BYTES") {
		t.Errorf("dead reason %q, want the size and the limit", dead)
	}
	peak := peakRSS(t, p)
	stopClean(t, p)
	r.check(t, 0)
	t.Logf("peak resident memory %d MB", peak>>20)
	// Loading the huge row would take at least twice its size; the race
	// detector multiplies what the rest takes.
	limit := int64(100 << 20)
	if raceEnabled {
		limit = 400 << 20
	}
	if peak > limit {
		t.Errorf("peak resident memory %d MB: the relay loaded more than it needed", peak>>20)
	}
}

// peakRSS reads a running process's peak resident memory (VmHWM).
func peakRSS(t *testing.T, p *proc) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/pid/status")
	return 0
}
