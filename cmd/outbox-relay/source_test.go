package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/ledger"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

// bothSources runs an end-to-end test once for each source (RELAY_SOURCE):
// what the product promises holds for both.
func bothSources(t *testing.T, test func(t *testing.T, source string)) {
	t.Parallel()
	for _, source := range []string{"poll", "logical"} {
		t.Run(source, func(t *testing.T) { test(t, source) })
	}
}

// everySource is bothSources, and the poll source with the table in four
// partitions ("shared", RELAY_PARTITIONS=4), which one replica holds
// alone: the partitioned read, record and parked rows under the test's
// faults.
func everySource(t *testing.T, test func(t *testing.T, source string)) {
	t.Parallel()
	for _, source := range []string{"poll", "logical", "shared"} {
		t.Run(source, func(t *testing.T) { test(t, source) })
	}
}

// useSource sets the rig's relays up to read from source. For logical it
// runs outbox-relay migrate, which creates the publication and the slot,
// before any row is written.
func (r *rig) useSource(t *testing.T, source string) {
	t.Helper()
	switch source {
	case "poll":
		return
	case "shared":
		r.env = append(r.env, "RELAY_PARTITIONS=4")
		return
	}
	testenv.SkipUnlessLogical(t, r.dbURL)
	r.env = append(r.env, "RELAY_SOURCE="+source)
	if code, out := runCmd(t, r.env, "migrate"); code != 0 || !strings.Contains(out, "replication slot") {
		t.Fatalf("migrate with RELAY_SOURCE=%s: exit %d: %s", source, code, out)
	}
}

// TestLogicalSourceKeepsCommitOrderWithoutLocks: the contended writers of
// TestContendedWritersKeepCommitOrder, without outbox_lock (which the poll
// source needs, and -order.unlocked shows it breaking without), and with
// a transaction held open in another database all along: the logical
// source delivers every event in commit
// order, exactly once, while the transaction stays open.
func TestLogicalSourceKeepsCommitOrderWithoutLocks(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.useSource(t, "logical")
	ctx := context.Background()
	open := testenv.OpenTransactionElsewhere(t)
	addr := freeAddr(t)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	r.contend(t, 16, false, false)
	time.Sleep(*orderDuration / 2)
	r.stopWrites()
	r.drained(t) // with the other transaction still open
	// The metrics agree: nothing pending, nothing held back, and the slot
	// retains some WAL; the table alone (status) would count every row
	// after the open transaction began as pending.
	eventually(t, "pending 0 and no hold-up in the metrics", func() bool {
		return metric(addr, "outbox_relay_pending_rows") == 0 && metric(addr, "outbox_relay_holdup_age_seconds") == 0 &&
			metric(addr, "outbox_relay_slot_retained_wal_bytes") > 0
	})
	var stillOpen bool
	if err := open.QueryRow(ctx, `SELECT true`).Scan(&stillOpen); err != nil || !stillOpen {
		t.Fatalf("the other database's transaction ended early: %v", err)
	}
	// Ended now: it would hold back the position of every poll-source test
	// beside this one.
	if err := open.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	stopClean(t, p)
	rep := r.check(t, 0)
	t.Logf("logical, no outbox_lock, a transaction open elsewhere: %d events, %d out of commit order", rep.Committed, rep.OrderViolations)

	// status shows the slot, free now, and what it retains.
	code, out := runCmd(t, r.env, "status", "--json")
	var st postgres.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Slot == nil {
		t.Fatalf("status --json: exit %d: %s", code, out)
	}
	if sl := st.Slot; !sl.Exists || sl.Active || sl.ConfirmedLSN == "" || sl.RetainedWALBytes <= 0 || sl.WALStatus == "" {
		t.Errorf("status shows the slot as %+v, want it existing, not read, with a confirmed LSN and the WAL it retains", *sl)
	}
}

// TestLogicalSourceNotSetUp: a relay told to read a slot that does not
// exist stops with exit code 2 and says what to run.
func TestLogicalSourceNotSetUp(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	level := testenv.WALLevel(t, r.dbURL)
	p := start(t, append(r.env, "RELAY_SOURCE=logical"))
	code := p.wait(30 * time.Second)
	want := "does not exist: run outbox-relay migrate with RELAY_SOURCE=logical"
	if level != "logical" {
		want = "wal_level is " + level
	}
	if code != 2 || !strings.Contains(p.log(), want) {
		t.Fatalf("exit %d, want 2 and %q in:\n%s", code, want, p.log())
	}
}

// TestAnOpenTransactionElsewhere: a transaction holds a transaction id
// open in another database of the server while rows are written. Both
// sources deliver them while it stays open (the poll source reads past
// running transactions), report no hold-up and nothing pending, and
// nothing is delivered twice across a clean restart while it runs.
func TestAnOpenTransactionElsewhere(t *testing.T) {
	bothSources(t, func(t *testing.T, source string) {
		t.Parallel()
		r := newRig(t)
		r.useSource(t, source)
		ctx := context.Background()
		open := testenv.OpenTransactionElsewhere(t)
		addr := freeAddr(t)
		p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
		const rows = 10
		for i := range rows {
			body, err := json.Marshal(ledger.Payload{Agg: "elsewhere", Seq: i})
			if err != nil {
				t.Fatal(err)
			}
			var id string
			if err := r.pool.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
				VALUES ('ledger', 'elsewhere', 'Tested', 'events', $1) RETURNING event_id::text`, body).Scan(&id); err != nil {
				t.Fatal(err)
			}
			r.ledger.Committed(id, ledger.Payload{Agg: "elsewhere", Seq: i})
		}
		r.drained(t) // while the other transaction is open
		eventually(t, "nothing pending in the metrics", func() bool {
			return metric(addr, "outbox_relay_pending_rows") == 0
		})
		if age := metric(addr, "outbox_relay_holdup_age_seconds"); age != 0 {
			t.Fatalf("hold-up of %.1f s reported, want none: no row waits", age)
		}
		stopClean(t, p)
		p = start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
		p.waitLog("leading", 30*time.Second)
		if err := open.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		r.drained(t)
		stopClean(t, p)
		r.check(t, 0)
	})
}
