package main

import (
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// publishWatch samples each replica's outbox_relay_rows_published_total
// and finds the sampling intervals in which more than one replica recorded
// rows as published: two publishers at once.
type publishWatch struct {
	mu       sync.Mutex
	last     map[string]float64
	thawing  map[string]bool // thawed, and still leading by its own account
	overlaps []string
	samples  int
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func watchPublishers(addrs map[string]string, every time.Duration) *publishWatch {
	w := &publishWatch{last: map[string]float64{}, thawing: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			var moved []string
			for name, addr := range addrs {
				v := metric(addr, "outbox_relay_rows_published_total")
				if v < 0 {
					continue // frozen or restarting: no answer
				}
				w.mu.Lock()
				if w.thawing[name] && metric(addr, "outbox_relay_leader") == 0 {
					// It stood down: what it counted up to now was
					// recorded before the freeze.
					delete(w.thawing, name)
					w.last[name] = v
					w.mu.Unlock()
					continue
				}
				if prev, ok := w.last[name]; ok && v > prev && !w.thawing[name] {
					moved = append(moved, name)
				}
				w.last[name] = v
				w.mu.Unlock()
			}
			w.mu.Lock()
			w.samples++
			if len(moved) > 1 {
				w.overlaps = append(w.overlaps, time.Now().Format("15:04:05.000")+" "+strings.Join(moved, "+"))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// forget drops a replica's last sample: when it restarts from zero, and
// when it is frozen, since it may have recorded rows after the last sample
// before the freeze that only show after the thaw.
func (w *publishWatch) forget(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.last, name)
}

// thawed marks a replica just thawed: until it reports that it no longer
// leads, its count may still grow by rows whose position it wrote before
// the freeze (the commit came back while it was frozen, and it reads the
// answer only now). A position write after the thaw is fenced: it fails,
// and counts nothing.
func (w *publishWatch) thawed(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.last, name)
	w.thawing[name] = true
}

func (w *publishWatch) close() []string {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.overlaps
}

// TestReplicasOnOneHostWithoutNames: three replicas with the same
// environment and no RELAY_REPLICA_NAME, on one host, as a systemd
// template, a Compose scale or pods sharing a host name run them. They get
// names of their own, so exactly one publishes; the publishing replica is
// SIGKILLed, then the next is frozen for three leases, then another is
// SIGKILLed. At no moment do two replicas record rows as published, the
// lease does not change hands more than the faults make it, and nothing is
// lost, reordered or duplicated beyond one window per fault.
func TestReplicasOnOneHostWithoutNames(t *testing.T) {
	t.Parallel()
	const lease = 2 * time.Second
	r := newRig(t)
	r.write(t, 4)
	env := append(r.env, "RELAY_LEASE_TIMEOUT="+lease.String())
	addrs := map[string]string{}
	procs := map[string]*proc{}
	for _, name := range []string{"x", "y", "z"} {
		addrs[name] = freeAddr(t)
		procs[name] = start(t, append(env, "RELAY_HTTP_ADDR="+addrs[name]))
	}
	watch := watchPublishers(addrs, 50*time.Millisecond)
	defer watch.close()
	leaderProc := func(not string) string {
		t.Helper()
		deadline := time.Now().Add(4 * lease)
		for time.Now().Before(deadline) {
			for name, addr := range addrs {
				if name != not && metric(addr, "outbox_relay_leader") == 1 {
					return name
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no replica other than %q leads within %s", not, 4*lease)
		return ""
	}

	first := leaderProc("")
	time.Sleep(lease) // writes and publishing under the first leader
	procs[first].signal(syscall.SIGKILL)
	procs[first].wait(10 * time.Second)
	killed := time.Now()
	second := leaderProc(first)
	t.Logf("takeover after SIGKILL of %s: %s", first, time.Since(killed).Round(10*time.Millisecond))
	procs[first] = start(t, append(env, "RELAY_HTTP_ADDR="+addrs[first])) // restarted, under a new name
	watch.forget(first)

	time.Sleep(lease)
	procs[second].signal(syscall.SIGSTOP)
	watch.forget(second)
	frozen := time.Now()
	third := leaderProc(second)
	t.Logf("takeover after SIGSTOP of %s: %s", second, time.Since(frozen).Round(10*time.Millisecond))
	time.Sleep(time.Until(frozen.Add(3 * lease)))
	procs[second].signal(syscall.SIGCONT)
	watch.thawed(second)

	time.Sleep(lease)
	procs[third].signal(syscall.SIGKILL)
	procs[third].wait(10 * time.Second)
	fourth := leaderProc(third)
	t.Logf("then %s leads", fourth)
	time.Sleep(lease)

	r.stopWrites()
	r.drained(t)
	if overlaps := watch.close(); len(overlaps) > 0 {
		t.Errorf("more than one replica recorded rows as published in %d of the 50 ms samples: %v", len(overlaps), overlaps)
	}
	// Every take of the lease bumps its epoch: the first leader and one
	// take per fault make 4, and one more is allowed for a lease that
	// lapsed under load. (Read before the stops, which may hand the lease
	// to a standby once more.)
	if takes := relayStatus(t, r.dbURL).Epoch; takes < 4 || takes > 5 {
		t.Errorf("the lease was taken %d times for 3 faults, want 4 (or 5)", takes)
	}
	for name, p := range procs {
		select {
		case <-p.done:
		default:
			if name != third {
				stopClean(t, p)
			}
		}
	}
	r.check(t, 3*window)
}
