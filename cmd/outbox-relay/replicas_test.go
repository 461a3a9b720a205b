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

// TestReplicasTakeOverWithoutSplitBrain runs three replicas on one table:
// one publishes; when it is SIGKILLed or frozen (SIGSTOP), another takes
// over within about the lease timeout, and a frozen leader that wakes up
// stops publishing instead of competing. Nothing is lost or reordered.
func TestReplicasTakeOverWithoutSplitBrain(t *testing.T) {
	t.Parallel()
	const lease = 2 * time.Second
	r := newRig(t)
	r.write(t, 4)
	procs := map[string]*proc{}
	for _, name := range []string{"r1", "r2", "r3"} {
		procs[name] = start(t, append(r.env, "RELAY_REPLICA_NAME="+name, fmt.Sprintf("RELAY_LEASE_TIMEOUT=%s", lease)))
	}
	first := r.leader(t, "", 30*time.Second)
	leading := 0
	time.Sleep(lease) // the others have tried and stand by
	for name, p := range procs {
		if strings.Contains(p.log(), "leading") {
			leading++
			if name != first {
				t.Fatalf("%s leads too, beside %s", name, first)
			}
		}
	}
	if leading != 1 {
		t.Fatalf("%d replicas lead, want 1", leading)
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
	procs[second].waitLog("lost the lease", 10*time.Second)

	time.Sleep(300 * time.Millisecond) // writes under the third leader, too
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
