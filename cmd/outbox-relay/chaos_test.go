package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/faultproxy"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

var (
	chaosDuration = flag.Duration("chaos.duration", 40*time.Second,
		"how long TestChaos injects faults (make chaos runs it for longer)")
	chaosReplicas = flag.Int("chaos.replicas", 2, "how many relay replicas TestChaos runs (1 to 3)")
	chaosSources  = flag.String("chaos.sources", "poll,logical,shared",
		"the sources (RELAY_SOURCE) TestChaos runs with, one after the other; shared is the poll source with three replicas all publishing (RELAY_PARTITIONS=12), which also join and leave; "+
			"cluster (not by default) runs two replicas against a three-node RabbitMQ cluster and a PostgreSQL primary with a standby it promotes")
)

// TestChaos runs writers (with rollbacks, and 8 connections sharing 4 hot
// aggregates under their ordering locks), relay replicas
// and a consumer against a PostgreSQL and a RabbitMQ of its own, and injects
// one fault after another at random moments: SIGKILL and restart of a
// replica, SIGSTOP/SIGCONT of the leader, the relays' broker connections
// closed, the broker application stopped and started, a memory or disk
// alarm, the relays' database backends terminated, an immediate database
// restart, and TCP cuts and stalls between the leader and either server
// (each replica reaches the servers through proxies of its own). Then it checks what was delivered against what was
// committed: nothing lost, nothing rolled back delivered, per-aggregate
// order intact, duplicates within one in-flight window per fault.
//
// The shared run has three replicas share the work in 12 partitions
// (RELAY_PARTITIONS): the faults hit any replica, not only a leader, and
// replicas also leave (SIGTERM) and join; after each fault every partition
// must be held again, by a replica that renewed its lease after the fault
// ended, within the lease timeout.
func TestChaos(t *testing.T) {
	t.Parallel()
	for _, source := range strings.Split(*chaosSources, ",") {
		if source == "cluster" {
			t.Run(source, chaosCluster)
			continue
		}
		t.Run(source, func(t *testing.T) { chaos(t, source) })
	}
}

func chaos(t *testing.T, source string) {
	const lease, parts = 2 * time.Second, 12
	shared := source == "shared"
	if shared {
		source = "poll"
	}
	pg := testenv.NewPostgresServer(t)
	node := testenv.NewRabbitServer(t)
	db := pg.Database(t)
	// The consumer connects as its own user, so closing the relays'
	// connections (user guest) leaves it alone.
	node.Ctl(t, "add_user", "consumer", "consumer")
	node.Ctl(t, "set_permissions", "-p", "/", "consumer", ".*", ".*", ".*")
	consumerURL := strings.Replace(node.URL, "guest:guest", "consumer:consumer", 1)
	gaps := &gapMeter{}
	r := newRigOnNode(t, db, node.URL, consumerURL, gaps.tick, "RELAY_LEASE_TIMEOUT="+lease.String())
	r.useSource(t, source)
	if shared {
		r.env = append(r.env, fmt.Sprintf("RELAY_PARTITIONS=%d", parts))
	}
	r.writeThrough(t, 6, true)
	r.contend(t, 8, true, true) // hot aggregates shared by concurrent writers

	if *chaosReplicas < 1 || *chaosReplicas > 3 {
		t.Fatalf("-chaos.replicas=%d: want 1 to 3", *chaosReplicas)
	}
	n := *chaosReplicas
	if shared {
		n = 4 // three run at first; the fourth joins
	}
	replicas := map[string]*proc{}
	links := map[string]*serverLinks{}
	running := map[string]bool{}
	startReplica := func(name string) {
		replicas[name] = start(t, append(r.env, links[name].env...))
		running[name] = true
	}
	for i := range n {
		name := fmt.Sprintf("c%d", i+1)
		links[name] = newServerLinks(t, db, node.URL, name)
		if !shared || i < 3 {
			startReplica(name)
		}
	}
	// leader is the replica a fault hits: the leader, or with shared work
	// any running replica.
	leader := func() string { return r.leader(t, "", 30*time.Second) }
	if shared {
		leader = func() string {
			names := slices.Sorted(maps.Keys(running))
			return names[rand.N(len(names))]
		}
		r.balanced(t, parts, time.Now(), lease, 3)
	} else {
		leader()
	}
	heldAgain := map[string]time.Duration{} // the longest, by kind, from a fault's end until every partition was held again

	faults := map[string]int{}
	end := time.Now().Add(*chaosDuration)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(300+rand.N(1200)) * time.Millisecond)
		kinds := []string{"kill", "freeze", "close", "stop_app", "alarm", "disk_alarm", "terminate", "pg_restart",
			"cut_db", "cut_broker", "stall_db", "stall_broker"}
		if shared {
			kinds = append(kinds, "leave", "join")
		}
		kind := kinds[rand.N(len(kinds))]
		before, at := faults[kind], time.Now()
		switch kind {
		case "kill":
			name := leader()
			replicas[name].signal(syscall.SIGKILL)
			replicas[name].wait(10 * time.Second)
			startReplica(name)
			faults[kind]++
		case "freeze":
			p := replicas[leader()]
			p.signal(syscall.SIGSTOP)
			time.Sleep(lease + time.Second) // another takes over
			p.signal(syscall.SIGCONT)
			faults[kind]++
		case "close":
			node.Ctl(t, "close_all_user_connections", "guest", "chaos")
			faults[kind]++
		case "stop_app":
			node.Ctl(t, "stop_app")
			time.Sleep(time.Duration(200+rand.N(800)) * time.Millisecond)
			node.Ctl(t, "start_app")
			faults[kind]++
		case "alarm":
			node.Ctl(t, "set_vm_memory_high_watermark", "0.000001")
			time.Sleep(time.Duration(500+rand.N(1000)) * time.Millisecond)
			node.Ctl(t, "set_vm_memory_high_watermark", "0.4")
			faults[kind]++
		case "disk_alarm":
			node.Ctl(t, "set_disk_free_limit", "100000GB")
			time.Sleep(time.Duration(500+rand.N(1000)) * time.Millisecond)
			node.Ctl(t, "set_disk_free_limit", "50MB")
			faults[kind]++
		case "terminate":
			if terminateRelays(r.pool) > 0 {
				faults[kind]++
			}
		case "pg_restart":
			pg.Restart(t)
			faults[kind]++
		case "cut_db", "cut_broker":
			l := links[leader()]
			p := l.db
			if kind == "cut_broker" {
				p = l.broker
			}
			if p.Cut() > 0 {
				faults[kind]++
			}
		case "leave":
			if len(running) > 2 {
				name := leader()
				stopClean(t, replicas[name])
				delete(running, name)
				faults[kind]++
			}
		case "join":
			for _, name := range slices.Sorted(maps.Keys(links)) {
				if !running[name] {
					startReplica(name)
					faults[kind]++
					break
				}
			}
		case "stall_db", "stall_broker":
			// Up to twice the lease: long enough, often, for the leader
			// to lose it while its connections hang.
			l := links[leader()]
			p := l.db
			if kind == "stall_broker" {
				p = l.broker
			}
			d := time.Duration(500+rand.N(2*lease.Milliseconds())) * time.Millisecond
			p.Stall(d)
			time.Sleep(d)
			faults[kind]++
		}
		if faults[kind] > before {
			gaps.fault(kind, at)
			if shared {
				// Every partition held again by a replica that renewed its
				// lease after the fault ended.
				ended := time.Now()
				deadline := ended.Add(30 * time.Second)
				for {
					if _, held := r.shares(t, ended, lease); held == parts {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("after %s, not every partition was held again within 30s", kind)
					}
					time.Sleep(20 * time.Millisecond)
				}
				heldAgain[kind] = max(heldAgain[kind], time.Since(ended))
			}
		}
	}

	r.wrote(t, 100) // writes after the last fault, too
	r.stopWrites()
	r.drained(t)
	for name, p := range replicas {
		select {
		case <-p.done: // killed earlier and replaced, or left
		default:
			if running[name] {
				stopClean(t, p)
			}
		}
	}
	total, kinds := faultCounts(faults)
	rep := r.check(t, total*window)
	t.Logf("chaos for %s: %d faults (%s); %s; longest gap between deliveries %s; longest gap after a fault, by kind: %s",
		*chaosDuration, total, kinds, rep, gaps.longest().Round(time.Millisecond), gaps.afterFaults())
	if shared {
		// A fault that hits one replica moves its partitions to the others
		// within the lease timeout. After one that hits every replica (a
		// server down, every connection closed) each comes back on its own
		// retry backoff (RetryMin doubling to RetryMax), not on a hand-over.
		var held []string
		for _, kind := range slices.Sorted(maps.Keys(heldAgain)) {
			d := heldAgain[kind]
			held = append(held, fmt.Sprintf("%s %s", kind, d.Round(time.Millisecond)))
			if oneReplica[kind] && d > lease {
				t.Errorf("after %s, every partition was held again only %s after the fault ended, more than the lease timeout %s", kind, d, lease)
			}
		}
		t.Logf("every partition held again after a fault ended, longest by kind: %s", strings.Join(held, ", "))
	}
}

// terminateRelays terminates the relays' database backends and returns how
// many there were.
func terminateRelays(pool *pgxpool.Pool) int {
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'outbox-relay%'`).Scan(&n); err != nil {
		return 0
	}
	return n
}

// faultCounts returns how many faults hit, and how many of each kind, in
// words.
func faultCounts(faults map[string]int) (int, string) {
	total := 0
	var kinds []string
	for k, n := range faults {
		total += n
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	return total, strings.Join(kinds, ", ")
}

// oneReplica are the faults that hit one replica, not a server every
// replica uses.
var oneReplica = map[string]bool{"kill": true, "freeze": true, "leave": true, "join": true,
	"cut_db": true, "cut_broker": true, "stall_db": true, "stall_broker": true}

// serverLinks are one replica's proxies to the database and the broker, and
// the environment that points the replica at them.
type serverLinks struct {
	db, broker *faultproxy.Proxy
	env        []string
}

func newServerLinks(t *testing.T, dbURL, amqpURL, name string) *serverLinks {
	t.Helper()
	db, dbVia := proxyURL(t, dbURL)
	broker, brokerVia := proxyURL(t, amqpURL)
	return &serverLinks{db: db, broker: broker, env: []string{
		"RELAY_DATABASE_URL=" + dbVia, "RELAY_AMQP_URL=" + brokerVia, "RELAY_REPLICA_NAME=" + name}}
}

// proxyURL starts a proxy to the server of rawURL and returns it with the
// URL that goes through it.
func proxyURL(t *testing.T, rawURL string) (*faultproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	u.Host = p.Addr()
	return p, u.String()
}

func declare(t *testing.T, amqpURL, queue string) { declareQueue(t, amqpURL, queue, nil) }

// gapMeter records the gaps between deliveries and when faults began, to
// tell how long delivery stopped after each kind of fault.
type gapMeter struct {
	mu     sync.Mutex
	last   time.Time
	max    time.Duration
	gaps   []span // gaps longer than minGap
	faults []faultAt
}

type span struct{ from, to time.Time }

type faultAt struct {
	kind string
	at   time.Time
}

// minGap is the shortest gap worth keeping: the writers commit every few
// milliseconds.
const minGap = 100 * time.Millisecond

func (g *gapMeter) tick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if !g.last.IsZero() {
		d := now.Sub(g.last)
		g.max = max(g.max, d)
		if d > minGap {
			g.gaps = append(g.gaps, span{g.last, now})
		}
	}
	g.last = now
}

func (g *gapMeter) fault(kind string, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.faults = append(g.faults, faultAt{kind, at})
}

func (g *gapMeter) longest() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}

// afterFaults is, per kind of fault, the longest gap that began after a
// fault of that kind and before the next fault: the gap is charged to the
// latest fault injected when delivery stopped.
func (g *gapMeter) afterFaults() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	worst := map[string]time.Duration{}
	for _, f := range g.faults {
		worst[f.kind] = max(worst[f.kind], 0)
	}
	for _, gp := range g.gaps {
		var latest *faultAt
		for i := range g.faults {
			if g.faults[i].at.After(gp.from) {
				break
			}
			latest = &g.faults[i]
		}
		if latest != nil {
			worst[latest.kind] = max(worst[latest.kind], gp.to.Sub(gp.from))
		}
	}
	var out []string
	for k, d := range worst {
		out = append(out, fmt.Sprintf("%s %s", k, d.Round(10*time.Millisecond)))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}
