package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

func TestDeadCommands(t *testing.T) {
	t.Parallel()
	dbURL := testenv.Database(t)
	broker := testenv.NewBroker(t)
	pool := newPool(t, dbURL)
	for _, key := range []string{"nobody.listens", "nobody.either"} {
		if _, err := pool.Exec(context.Background(), `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, exchange, routing_key, payload)
VALUES ('order', $1, 'Lonely', 'amq.direct', $1, '{}')`, key); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"RELAY_DATABASE_URL=" + dbURL}
	p := start(t, append(env, "RELAY_AMQP_URL="+broker.URL, "RELAY_MAX_ATTEMPTS=1"))
	defer stopClean(t, p)

	type deadRow struct {
		ID       int64  `json:"id"`
		Attempts int    `json:"attempts"`
		Reason   string `json:"reason"`
	}
	list := func(want int) []deadRow {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			code, out := runCmd(t, env, "dead", "list", "--json")
			var rows []deadRow
			if code == 0 && json.Unmarshal([]byte(out), &rows) == nil && len(rows) == want {
				return rows
			}
			if time.Now().After(deadline) {
				t.Fatalf("dead list: exit %d, %s; want %d rows", code, out, want)
			}
		}
	}
	dead := list(2)
	if dead[0].Attempts != 1 || !strings.Contains(dead[0].Reason, "312") {
		t.Fatalf("dead row %+v, want 1 attempt and the 312 NO_ROUTE reason", dead[0])
	}
	if code, out := runCmd(t, env, "dead", "list"); code != 0 || !strings.Contains(out, "NO_ROUTE") {
		t.Fatalf("dead list: exit %d: %s", code, out)
	}
	for _, args := range [][]string{{"dead"}, {"dead", "retry"}, {"dead", "drop", "--all", "7"}, {"dead", "frob"}, {"dead", "retry", "x"}} {
		if code, out := runCmd(t, env, args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, out)
		}
	}
	if code, _ := runCmd(t, env, "dead", "retry", "999999"); code != 1 {
		t.Errorf("dead retry of a row that is not dead: exit %d, want 1", code)
	}

	// Drop one; retry the other once a queue is bound: it arrives.
	if code, out := runCmd(t, env, "dead", "drop", strconv.FormatInt(dead[1].ID, 10)); code != 0 {
		t.Fatalf("dead drop: exit %d: %s", code, out)
	}
	list(1)
	queue := broker.DeclareQueue(t, "amq.direct", "nobody.listens")
	if code, out := runCmd(t, env, "dead", "retry", "--all"); code != 0 {
		t.Fatalf("dead retry --all: exit %d: %s", code, out)
	}
	ch, err := broker.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok, err := ch.Get(queue, true); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the retried row never arrived")
		}
	}
	list(0)
	if code, out := runCmd(t, env, "status", "--json"); code != 0 || !strings.Contains(out, `"dead":0`) {
		t.Fatalf("status: exit %d: %s", code, out)
	}
}
