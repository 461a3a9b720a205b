package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// shares returns how many partitions each replica holds under a lease that
// was renewed after since (so by a replica running then), and how many
// partitions are held so.
func (r *rig) shares(t *testing.T, since time.Time, lease time.Duration) (map[string]int, int) {
	t.Helper()
	rows, err := r.pool.Query(context.Background(), `SELECT holder FROM outbox_relay_position
		WHERE starts_with(outbox_table, 'public.outbox#') AND holder IS NOT NULL
		  AND lease_until > now() AND lease_until > $1::timestamptz + $2 * interval '1 millisecond'`, since, lease.Milliseconds())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	held, n := map[string]int{}, 0
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			t.Fatal(err)
		}
		held[h]++
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return held, n
}

// balanced waits until exactly replicas replicas hold every one of p
// partitions, each its share (p/replicas, or one more), under leases
// renewed after since, and returns how long after since that was.
func (r *rig) balanced(t *testing.T, p int, since time.Time, lease time.Duration, replicas int) time.Duration {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		held, n := r.shares(t, since, lease)
		ok := n == p && len(held) == replicas
		for _, c := range held {
			if c < p/replicas || c > (p+replicas-1)/replicas {
				ok = false
			}
		}
		if ok {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not shared among %d replicas within 60s: %d of %d held, %v", replicas, n, p, held)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPartitionsShareTheWork runs three replicas with RELAY_PARTITIONS=12
// against writers that contend for hot aggregates under their ordering
// locks: each replica takes and publishes its share of four partitions;
// when one is killed, the other two take its partitions over; when it
// comes back it takes its share again; one that stops cleanly hands its
// partitions over. Nothing is lost or reordered, and duplicates stay within
// one window per fault. The replicas run as a user would run them: no
// names (each takes a unique one), the default lease timeout.
func TestPartitionsShareTheWork(t *testing.T) {
	t.Parallel()
	const lease, parts = relay.DefaultLeaseTimeout, 12
	r := newRig(t)
	r.write(t, 4)
	r.contend(t, 8, true, false)
	procs, addrs := map[string]*proc{}, map[string]string{}
	run := func(label string) {
		addrs[label] = freeAddr(t)
		procs[label] = start(t, append(r.env, fmt.Sprintf("RELAY_PARTITIONS=%d", parts), "RELAY_HTTP_ADDR="+addrs[label]))
	}
	began := time.Now()
	for _, label := range []string{"r1", "r2", "r3"} {
		run(label)
	}
	t.Logf("three replicas share the partitions %s after the start", r.balanced(t, parts, began, lease, 3).Round(time.Millisecond))
	r.wrote(t, 300)
	for _, name := range []string{"r1", "r2", "r3"} {
		eventually(t, name+" publishes", func() bool { return metric(addrs[name], "outbox_relay_rows_published_total") > 0 })
	}

	// A replica dies: the two others take its partitions over.
	killed := time.Now()
	procs["r3"].signal(syscall.SIGKILL)
	procs["r3"].wait(10 * time.Second)
	took := r.balanced(t, parts, killed, lease, 2)
	t.Logf("after SIGKILL of r3, r1 and r2 hold every partition %s later", took.Round(time.Millisecond))
	if took > lease {
		t.Errorf("the partitions of a killed replica were held again %s after, more than the lease timeout %s", took, lease)
	}
	r.wrote(t, 300)

	// It comes back and takes its share again.
	back := time.Now()
	run("r3")
	t.Logf("r3 back: shared again %s later", r.balanced(t, parts, back, lease, 3).Round(time.Millisecond))
	r.wrote(t, 300)

	// One leaves cleanly: its partitions are handed over.
	left := time.Now()
	stopClean(t, procs["r2"])
	took = r.balanced(t, parts, left, lease, 2)
	t.Logf("after r2 stopped, r1 and r3 hold every partition %s later", took.Round(time.Millisecond))
	if took > lease {
		t.Errorf("the partitions of a stopped replica were held again %s after, more than the lease timeout %s", took, lease)
	}
	r.wrote(t, 300)

	r.stopWrites()
	r.drained(t)
	for _, name := range slices.Sorted(maps.Keys(procs)) {
		if name != "r2" {
			stopClean(t, procs[name])
		}
	}
	r.check(t, window) // one fault: the kill
	if !strings.Contains(procs["r1"].log(), "handed over") {
		t.Errorf("r1 never handed over: its log has no hand-over")
	}
}

// TestPartitionCountIsChecked: migrate with RELAY_PARTITIONS sets the
// table's count; a replica with another count exits 2 naming the procedure,
// and so does one that asks for partitions of the logical source.
func TestPartitionCountIsChecked(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	code, out := runCmd(t, append(r.env, "RELAY_PARTITIONS=4"), "migrate")
	if code != 0 || !strings.Contains(out, "partitions: 4, was 1") {
		t.Fatalf("migrate with RELAY_PARTITIONS=4: exit %d: %s", code, out)
	}
	if code, out := runCmd(t, append(r.env, "RELAY_PARTITIONS=4"), "migrate"); code != 0 || !strings.Contains(out, "partitions: 4 (unchanged)") {
		t.Fatalf("migrate again: exit %d: %s", code, out)
	}
	if code, out := runCmd(t, r.env, "migrate"); code != 0 || strings.Contains(out, "partitions") {
		t.Fatalf("migrate without RELAY_PARTITIONS: exit %d, or it changed the count: %s", code, out)
	}
	for _, n := range []string{"1", "2"} {
		code, out := runCmd(t, append(r.env, "RELAY_PARTITIONS="+n), "run")
		if code != 2 || !strings.Contains(out, "RELAY_PARTITIONS is "+n) || !strings.Contains(out, "docs/partitions.md") {
			t.Fatalf("run with RELAY_PARTITIONS=%s on a table in 4: exit %d, want 2 naming the procedure: %s", n, code, out)
		}
	}
	code, out = runCmd(t, append(r.env, "RELAY_PARTITIONS=4", "RELAY_SOURCE=logical"), "run")
	if code != 2 || !strings.Contains(out, "RELAY_PARTITIONS") || !strings.Contains(out, "logical source") {
		t.Fatalf("run with RELAY_PARTITIONS=4 and the logical source: exit %d, want 2: %s", code, out)
	}
	if st := relayStatus(t, r.dbURL); st.PartitionCount != 4 || len(st.Partitions) != 4 {
		t.Fatalf("status: %d partitions, %d listed; want 4", st.PartitionCount, len(st.Partitions))
	}
}
