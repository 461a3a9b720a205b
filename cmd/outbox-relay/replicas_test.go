package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leader returns the replica named in the lease, waiting up to timeout for
// one that differs from not.
func (r *rig) leader(t *testing.T, not string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var holder string
		err := r.pool.QueryRow(context.Background(),
			`SELECT coalesce(holder, '') FROM outbox_relay_position WHERE lease_until > now()`).Scan(&holder)
		if err == nil && holder != "" && holder != not {
			return holder
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica other than %q took the lease within %s", not, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaseRow is the outbox's lease: who holds it, in which term (epoch),
// until when.
type leaseRow struct {
	holder string
	epoch  int64
	until  time.Time
}

func (r *rig) leaseRow(t *testing.T) leaseRow {
	t.Helper()
	var l leaseRow
	if err := r.pool.QueryRow(context.Background(), `SELECT coalesce(holder, ''), epoch, coalesce(lease_until, 'epoch')
		FROM outbox_relay_position`).Scan(&l.holder, &l.epoch, &l.until); err != nil {
		t.Fatal(err)
	}
	return l
}

// renewals waits until the lease has been renewed n times from now.
func (r *rig) renewals(t *testing.T, n int) {
	t.Helper()
	last := r.leaseRow(t).until
	for i := range n {
		eventually(t, fmt.Sprintf("lease renewal %d of %d", i+1, n), func() bool {
			l := r.leaseRow(t)
			if l.until.Equal(last) {
				return false
			}
			last = l.until
			return true
		})
	}
}

// holdsName reports whether a live session holds the replica name's lock:
// the first thing a replica does in every attempt at the lease.
func (r *rig) holdsName(t *testing.T, name string) bool {
	t.Helper()
	var n int
	if err := r.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND objid = hashtext($1)::oid
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		"public.outbox "+name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestReplicasTakeOverWithoutSplitBrain runs three replicas on one table:
// one publishes; when it is SIGKILLed or frozen (SIGSTOP), another takes
// over within about the lease timeout, and a frozen leader that wakes up
// stops publishing instead of competing. Nothing is lost or reordered.
func TestReplicasTakeOverWithoutSplitBrain(t *testing.T) {
	bothSources(t, testReplicasTakeOverWithoutSplitBrain)
}

func testReplicasTakeOverWithoutSplitBrain(t *testing.T, source string) {
	t.Parallel()
	const lease = 2 * time.Second
	r := newRig(t)
	r.useSource(t, source)
	r.write(t, 4)
	procs := map[string]*proc{}
	addrs := map[string]string{}
	for _, name := range []string{"r1", "r2", "r3"} {
		addrs[name] = freeAddr(t)
		procs[name] = start(t, append(r.env, "RELAY_REPLICA_NAME="+name, fmt.Sprintf("RELAY_LEASE_TIMEOUT=%s", lease),
			"RELAY_HTTP_ADDR="+addrs[name]))
	}
	first := r.leader(t, "", 30*time.Second)
	// The others have tried and stand by: each holds its name, which it
	// takes first in every attempt at the lease, and the leader has renewed
	// twice since, long after each one's attempt (every 3/8 of the lease at
	// most) ran its course. Every take bumps the epoch: one take, by the
	// first.
	eventually(t, "every replica holds its name", func() bool {
		return r.holdsName(t, "r1") && r.holdsName(t, "r2") && r.holdsName(t, "r3")
	})
	r.renewals(t, 2)
	if l := r.leaseRow(t); l.holder != first || l.epoch != 1 {
		t.Fatalf("lease held by %s in epoch %d, want %s in epoch 1: a standby took it", l.holder, l.epoch, first)
	}
	for name, addr := range addrs {
		if want := float64(b2i(name == first)); metric(addr, "outbox_relay_leader") != want {
			t.Fatalf("%s: outbox_relay_leader = %v, want %v (%s leads)", name, metric(addr, "outbox_relay_leader"), want, first)
		}
	}

	// The leader dies: another takes over once its lease lapses.
	killed := time.Now()
	procs[first].signal(syscall.SIGKILL)
	procs[first].wait(10 * time.Second)
	second := r.leader(t, first, 4*lease)
	t.Logf("takeover after SIGKILL: %s (lease %s)", time.Since(killed).Round(10*time.Millisecond), lease)

	// The new leader freezes for three leases: a third replica takes over,
	// and the frozen one, once thawed, stops publishing.
	frozen := time.Now()
	procs[second].signal(syscall.SIGSTOP)
	third := r.leader(t, second, 4*lease)
	t.Logf("takeover after SIGSTOP: %s", time.Since(frozen).Round(10*time.Millisecond))
	time.Sleep(lease)
	procs[second].signal(syscall.SIGCONT)
	eventually(t, second+" finds it lost the lease and stops leading", func() bool {
		return metric(addrs[second], `outbox_relay_publish_failures_total{reason="lease"}`) >= 1 &&
			metric(addrs[second], "outbox_relay_leader") == 0
	})

	r.wrote(t, 100) // writes under the third leader, too
	r.stopWrites()
	r.drained(t)

	// status names the leader while it runs.
	code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + r.dbURL}, "status", "--json")
	if code != 0 || !strings.Contains(out, `"leader":"`+third+`"`) {
		t.Fatalf("status: exit %d, %s; want leader %s", code, out, third)
	}
	for name, p := range procs {
		if name != first {
			stopClean(t, p)
		}
	}
	// Two faults, each worth at most one in-flight window.
	r.check(t, 2*window)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
