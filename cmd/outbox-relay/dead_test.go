package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
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

	// A dry run names the rows, the table and the database, and changes
	// nothing.
	where := "table outbox in " + postgres.Describe(dbURL)
	first, second := strconv.FormatInt(dead[0].ID, 10), strconv.FormatInt(dead[1].ID, 10)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dead", "drop", "--dry-run", "--all"}, "dry run: 2 dead rows of " + where + " would be dropped: [" + first + " " + second + "]; nothing was changed"},
		{[]string{"dead", "retry", second, "--dry-run"}, "dry run: 1 dead row of " + where + " would be sent back for publishing: [" + second + "]; nothing was changed"},
	} {
		code, out := runCmd(t, env, c.args...)
		if code != 0 || !strings.Contains(out, c.want) || !strings.Contains(out, "NO_ROUTE") {
			t.Errorf("%v: exit %d, want 0 and %q with the rows:\n%s", c.args, code, c.want, out)
		}
		if code, out := runCmd(t, env, "dead", "list", "--json"); code != 0 || strings.Count(out, `"id":`) != 2 {
			t.Fatalf("after %v: exit %d, %s; want the 2 dead rows still dead", c.args, code, out)
		}
	}
	if code, out := runCmd(t, env, "dead", "drop", "--dry-run", "999999"); code != 1 || !strings.Contains(out, "not dead rows of "+where+": [999999]") {
		t.Errorf("dead drop --dry-run of a row that is not dead: exit %d, want 1: %s", code, out)
	}

	// Drop one; retry the other once a queue is bound: it arrives. Each
	// says where it acted and leaves a log line per row.
	code, out := runCmd(t, env, "dead", "drop", second)
	if code != 0 || !strings.Contains(out, "1 dead row of "+where+" dropped: ["+second+"]") ||
		!strings.Contains(out, `msg="dead row dropped: it will never be published" table=outbox id=`+second) {
		t.Fatalf("dead drop: exit %d: %s", code, out)
	}
	list(1)
	queue := broker.DeclareQueue(t, "amq.direct", "nobody.listens")
	code, out = runCmd(t, env, "dead", "retry", "--all")
	if code != 0 || !strings.Contains(out, "1 dead row of "+where+" sent back for publishing: ["+first+"]") ||
		!strings.Contains(out, `msg="dead row sent back for publishing" table=outbox id=`+first) {
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
