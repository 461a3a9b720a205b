package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// take gets n messages from queue, waiting up to 30 s for them.
func take(t *testing.T, ch *amqp.Channel, queue string, n int) []amqp.Delivery {
	t.Helper()
	var got []amqp.Delivery
	for deadline := time.Now().Add(30 * time.Second); len(got) < n; time.Sleep(20 * time.Millisecond) {
		for {
			d, ok, err := ch.Get(queue, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			got = append(got, d)
		}
		if len(got) < n && time.Now().After(deadline) {
			t.Fatalf("%d messages arrived in %s, want %d", len(got), queue, n)
		}
	}
	return got
}

// empty fails the test if queue holds messages.
func empty(t *testing.T, ch *amqp.Channel, queue string) {
	t.Helper()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Fatalf("%d messages in %s, want none", q.Messages, queue)
	}
}

// outboxRow is what the test knows of a row it wrote.
type outboxRow struct {
	id      int64
	eventID string
	agg     string
}

func TestReplay(t *testing.T) {
	t.Parallel()
	dbURL := testenv.Database(t)
	broker := testenv.NewBroker(t)
	queue := broker.DeclareQueue(t, "", "events")
	other := broker.DeclareQueue(t, "", "other")
	pool := newPool(t, dbURL)
	ctx := context.Background()
	ch, err := broker.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	insert := func(agg, exchange string, age time.Duration) outboxRow {
		t.Helper()
		r := outboxRow{agg: agg}
		if err := pool.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, headers, created_at)
VALUES ('order', $1, 'Tested', nullif($2, ''), 'events', '{}', '{"tenant":"acme"}', now() - $3 * interval '1 millisecond')
RETURNING id, event_id::text`, agg, exchange, age.Milliseconds()).Scan(&r.id, &r.eventID); err != nil {
			t.Fatal(err)
		}
		return r
	}

	// Two rows old enough for retention, six young ones of two aggregates,
	// and one the broker rejects (no queue bound), which dies.
	old := []outboxRow{insert("1", "", 3*time.Hour), insert("2", "", 3*time.Hour)}
	var young []outboxRow
	for i := range 6 {
		young = append(young, insert(strconv.Itoa(1+i%2), "", 0))
	}
	insert("3", "amq.direct", 0)

	env := []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + broker.URL, "RELAY_BATCH_SIZE=2"}
	addr := freeAddr(t)
	p := start(t, append(env, "RELAY_MAX_ATTEMPTS=1", "RELAY_RETENTION=1h", "RELAY_POLL_INTERVAL=20ms", "RELAY_HTTP_ADDR="+addr))
	take(t, ch, queue, 8)
	settledPosition(t, env)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var left, dead int
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox WHERE id = ANY($1)),
			(SELECT count(*) FROM outbox_relay_parked WHERE dead)`, []int64{old[0].id, old[1].id}).Scan(&left, &dead); err != nil {
			t.Fatal(err)
		}
		if left == 0 && dead == 1 {
			break // retention deleted the old rows; the rejected one is dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s: %d old rows left, %d dead rows; want 0 and 1", left, dead)
		}
	}
	eventually(t, "retention counts the 2 rows it deleted", func() bool {
		return metric(addr, "outbox_relay_retention_deleted_rows_total") == 2
	})
	stopClean(t, p)
	pending := insert("1", "", 0) // the relay is stopped: this one stays pending

	t.Run("one aggregate", func(t *testing.T) {
		code, out := runCmd(t, env, "replay", "--aggregate-type", "order", "--aggregate-id", "1")
		if code != 0 {
			t.Fatalf("replay: exit %d: %s", code, out)
		}
		for _, s := range []string{"replayed 3 rows", "1 row of the selection not published yet", "deleted by retention"} {
			if !strings.Contains(out, s) {
				t.Errorf("replay output lacks %q:\n%s", s, out)
			}
		}
		got := take(t, ch, queue, 3)
		for i, d := range got {
			want := young[2*i] // aggregate 1: young rows 0, 2, 4, in order
			if d.MessageId != want.eventID || d.Headers["outbox_id"] != want.id || d.Headers["aggregate_id"] != "1" ||
				d.Headers["outbox_replay"] != true || d.Headers["tenant"] != "acme" || d.Type != "Tested" {
				t.Errorf("message %d: id %s, headers %v; want row %d (%s) marked as a replay", i, d.MessageId, d.Headers, want.id, want.eventID)
			}
		}
		empty(t, ch, queue) // not the pending row, not the dead one
	})

	t.Run("dry run", func(t *testing.T) {
		code, out := runCmd(t, env, "replay", "--all", "--dry-run")
		if code != 0 {
			t.Fatalf("replay --all --dry-run: exit %d: %s", code, out)
		}
		var printed []string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "message_id") {
				printed = append(printed, strings.Fields(line)[0])
			}
		}
		var want []string
		for _, r := range young {
			want = append(want, strconv.FormatInt(r.id, 10))
		}
		if !slices.Equal(printed, want) {
			t.Errorf("dry run printed rows %v, want %v:\n%s", printed, want, out)
		}
		for _, s := range []string{"dry run: 6 rows would be replayed", "message_id " + young[0].eventID, `routing key "events"`,
			"1 row of the selection parked (1 of them dead)", "1 row of the selection not published yet", "deleted by retention"} {
			if !strings.Contains(out, s) {
				t.Errorf("dry run output lacks %q:\n%s", s, out)
			}
		}
		empty(t, ch, queue)
	})

	t.Run("to another queue", func(t *testing.T) {
		code, out := runCmd(t, env, "replay", "--from-id", fmt.Sprint(young[4].id), "--to-id", fmt.Sprint(pending.id), "--to-queue", other)
		if code != 0 || !strings.Contains(out, "replayed 2 rows") || strings.Contains(out, "retention") {
			t.Fatalf("replay --to-queue: exit %d: %s", code, out)
		}
		got := take(t, ch, other, 2)
		if got[0].MessageId != young[4].eventID || got[1].MessageId != young[5].eventID || got[1].Headers["outbox_replay"] != true {
			t.Errorf("replayed %s, %s; want rows %d, %d", got[0].MessageId, got[1].MessageId, young[4].id, young[5].id)
		}
		empty(t, ch, queue)
	})

	t.Run("only rows retention deleted", func(t *testing.T) {
		until := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		code, out := runCmd(t, env, "replay", "--until", until)
		if code != 1 || !strings.Contains(out, "replayed 0 rows") || !strings.Contains(out, "were deleted by retention") {
			t.Fatalf("replay of deleted rows: exit %d, want 1 with a report:\n%s", code, out)
		}
		empty(t, ch, queue)
	})

	t.Run("nothing published yet", func(t *testing.T) {
		code, out := runCmd(t, env, "replay", "--from-id", fmt.Sprint(pending.id))
		if code != 0 || !strings.Contains(out, "replayed 0 rows") || !strings.Contains(out, "1 row of the selection not published yet") {
			t.Fatalf("replay of a pending row: exit %d: %s", code, out)
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"replay"}, {"replay", "--dry-run"}, {"replay", "--aggregate-id", "1"}, {"replay", "--since", "yesterday"},
			{"replay", "--all", "--event-type", "Tested"}, {"replay", "--from-id", "9", "--to-id", "3"}, {"replay", "--from-id", "0"},
			{"replay", "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"}, {"replay", "--all", "extra"},
		} {
			code, out := runCmd(t, env, args...)
			if code != 2 || !strings.Contains(out, "replay") {
				t.Errorf("%v: exit %d (%s), want 2", args, code, out)
			}
		}
		if code, out := runCmd(t, env, "replay", "-h"); code != 0 || !strings.Contains(out, "outbox_replay") {
			t.Errorf("replay -h: exit %d: %s", code, out)
		}
		empty(t, ch, queue)
	})

	t.Run("rows that cannot become messages", func(t *testing.T) {
		// Published rows whose headers were edited since into values that
		// cannot become AMQP headers: replay names and skips them, and
		// sends the rest in order.
		bad := []int64{young[1].id, young[4].id}
		if _, err := pool.Exec(ctx, `UPDATE outbox SET headers = '{"nested":{"x":1}}' WHERE id = ANY($1)`, bad); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := pool.Exec(ctx, `UPDATE outbox SET headers = '{"tenant":"acme"}' WHERE id = ANY($1)`, bad); err != nil {
				t.Error(err)
			}
		})
		good := []outboxRow{young[0], young[2], young[3], young[5]}
		skipped := fmt.Sprintf("2 rows of the selection skipped: cannot become messages, so not replayed (ids %d, %d;", bad[0], bad[1])
		warnings := []string{fmt.Sprintf("row %d skipped: ", bad[0]), fmt.Sprintf("row %d skipped: ", bad[1]), "bad headers"}

		code, out := runCmd(t, env, "replay", "--all", "--dry-run")
		var printed []string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "message_id") {
				printed = append(printed, strings.Fields(line)[0])
			}
		}
		var want []string
		for _, r := range good {
			want = append(want, strconv.FormatInt(r.id, 10))
		}
		if code != 0 || !slices.Equal(printed, want) {
			t.Errorf("replay --all --dry-run: exit %d, printed rows %v; want 0 and rows %v:\n%s", code, printed, want, out)
		}
		for _, s := range append([]string{"dry run: 4 rows would be replayed", skipped}, warnings...) {
			if !strings.Contains(out, s) {
				t.Errorf("dry run output lacks %q:\n%s", s, out)
			}
		}

		code, out = runCmd(t, env, "replay", "--all", "--to-queue", other)
		if code != 0 {
			t.Errorf("replay --all: exit %d, want 0:\n%s", code, out)
		}
		for _, s := range append([]string{"replayed 4 rows", skipped}, warnings...) {
			if !strings.Contains(out, s) {
				t.Errorf("replay output lacks %q:\n%s", s, out)
			}
		}
		got := take(t, ch, other, len(good))
		for i, d := range got {
			if d.MessageId != good[i].eventID {
				t.Errorf("message %d is %s, want row %d (%s)", i, d.MessageId, good[i].id, good[i].eventID)
			}
		}
		empty(t, ch, other)
	})

	// Replays leave the relay's position alone: the pending row is still
	// pending.
	var after bool
	if err := pool.QueryRow(ctx, `SELECT (o.txid, o.id) > (p.txid, p.id) FROM outbox o, outbox_relay_position p WHERE o.id = $1`,
		pending.id).Scan(&after); err != nil || !after {
		t.Fatalf("the pending row is no longer after the position (%v)", err)
	}
}
