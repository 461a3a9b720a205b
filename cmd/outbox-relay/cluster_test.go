package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/faultproxy"
	"github.com/outboxrelay/outboxrelay/internal/ledger"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// clusterRig is a rig on production shapes: a three-node RabbitMQ cluster
// with the events queue a quorum queue, which the relays reach through a
// proxy per node (RELAY_AMQP_URL lists the three), and a PostgreSQL primary
// with a synchronous streaming standby, which the relays and writers reach
// through a multi-host URL with target_session_attrs=read-write.
type clusterRig struct {
	*rig
	nodes            []*testenv.RabbitServer
	proxies          []*faultproxy.Proxy // one per node, in the order of nodes
	primary, standby *testenv.PostgresServer
	dbName           string
}

func newClusterRig(t *testing.T, observe func(), env ...string) *clusterRig {
	t.Helper()
	c := &clusterRig{primary: testenv.NewPostgresServer(t)}
	db := c.primary.Database(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	c.dbName = strings.TrimPrefix(u.Path, "/")
	c.standby = c.primary.NewStandby(t, true)
	c.nodes = testenv.NewRabbitCluster(t, 3)
	declareQueue(t, c.nodes[0].URL, "events", amqp.Table{"x-queue-type": "quorum"})
	var via, direct []string
	for _, n := range c.nodes {
		p, u := proxyURL(t, n.URL)
		c.proxies = append(c.proxies, p)
		via, direct = append(via, u), append(direct, n.URL)
	}
	dbURL := c.multiHost(t)
	r := &rig{dbURL: dbURL, amqpURL: c.nodes[len(c.nodes)-1].URL, ledger: ledger.New(), pool: newPool(t, dbURL)}
	r.env = append([]string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=" + strings.Join(via, ","),
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=20ms"}, env...)
	ctx, cancel := context.WithCancel(context.Background())
	// The consumer reads from the last node, which no fault kills: a
	// consumer whose node dies gets its unacknowledged messages again, in
	// whatever order the queue returns them, which would count against
	// the relay here.
	consumer := &ledger.Consumer{URL: direct[len(direct)-1], Queue: "events", Ledger: r.ledger, Observe: observe}
	r.wg.Go(func() { consumer.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		r.close()
	})
	c.rig = r
	return c
}

// multiHost is the URL naming the primary and the standby, for whichever
// takes writes.
func (c *clusterRig) multiHost(t *testing.T) string {
	return fmt.Sprintf("postgres://postgres@%s,%s/%s?target_session_attrs=read-write",
		hostPort(t, c.primary.URL), hostPort(t, c.standby.URL), c.dbName)
}

// promote crashes the primary and promotes the standby; the relays' and
// writers' URL names both, so they follow by themselves. The pair has no
// third server: one promotion per rig.
func (c *clusterRig) promote(t *testing.T) {
	t.Helper()
	c.primary.Crash(t)
	c.standby.Promote(t)
	c.primary, c.standby = c.standby, nil
}

// consumerNode is the node the consumer reads from: no fault kills it.
func (c *clusterRig) consumerNode() int { return len(c.nodes) - 1 }

// leaderNode returns the node that leads the events queue, or another one
// if that is the consumer's.
func (c *clusterRig) leaderNode(t *testing.T) int {
	t.Helper()
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		leader := n.QueueLeader(t, "events")
		for i, m := range c.nodes {
			if m.Node == leader && i != c.consumerNode() {
				return i
			}
		}
		break
	}
	return rand.N(c.consumerNode())
}

// declareQueue declares a durable queue with args.
func declareQueue(t *testing.T, amqpURL, queue string, args amqp.Table) {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
}

// TestRelayOnARabbitMQCluster publishes to a quorum queue of a three-node
// cluster while the node that leads the queue, which is also the one the
// relay is connected to (the first of RELAY_AMQP_URL, where the queue was
// declared), is killed and restarted, then the node that leads it next
// (another, when that is the consumer's node), then while the relay's
// links to every node are cut: the relay moves to a surviving node each
// time, and nothing is lost or reordered.
func TestRelayOnARabbitMQCluster(t *testing.T) {
	t.Parallel()
	c := newClusterRig(t, nil)
	c.writeThrough(t, 3, true)
	c.contend(t, 4, true, true)
	p := start(t, c.env)
	c.wrote(t, 200)
	faults := 0
	for _, pick := range []string{"first leader", "next leader"} {
		i := c.leaderNode(t)
		before := c.ledger.Distinct()
		c.nodes[i].Kill(t)
		faults++
		eventually(t, "deliveries go on with node "+c.nodes[i].Node+" dead", func() bool { return c.ledger.Distinct() > before+100 })
		c.nodes[i].Start(t)
		c.wrote(t, 200)
		t.Logf("%s %s killed and back", pick, c.nodes[i].Node)
	}
	for i := range c.proxies {
		if c.proxies[i].Cut() > 0 {
			faults++
		}
	}
	c.wrote(t, 200)
	c.stopWrites()
	c.drained(t)
	stopClean(t, p)
	c.check(t, faults*window)
}

// chaosCluster is TestChaos on production shapes (clusterRig): two
// replicas; faults are broker nodes killed and restarted one at a time (the
// node leading the queue half of the time), a stop of one node's
// application, network cuts and stalls between the relays and one node,
// replicas killed and frozen, backends terminated, and PostgreSQL
// promotions: the primary crashes and its synchronous standby takes over
// (once per run: the pair has no third server).
func chaosCluster(t *testing.T) {
	const lease = 2 * time.Second
	gaps := &gapMeter{}
	c := newClusterRig(t, gaps.tick, "RELAY_LEASE_TIMEOUT="+lease.String())
	c.writeThrough(t, 6, true)
	c.contend(t, 8, true, true)
	replicas := map[string]*proc{}
	startReplica := func(name string) {
		replicas[name] = start(t, append(c.env, "RELAY_REPLICA_NAME="+name))
	}
	for _, name := range []string{"c1", "c2"} {
		startReplica(name)
	}
	leader := func() string { return c.leader(t, "", 30*time.Second) }
	leader()
	faults := map[string]int{}
	end := time.Now().Add(*chaosDuration)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(300+rand.N(1200)) * time.Millisecond)
		kinds := []string{"kill_node", "kill_leader_node", "stop_app", "cut_node", "stall_node", "kill", "freeze", "terminate"}
		if c.standby != nil && faults["promote"] == 0 && time.Now().After(end.Add(-*chaosDuration/2)) {
			kinds = append(kinds, "promote")
		}
		kind := kinds[rand.N(len(kinds))]
		before, at := faults[kind], time.Now()
		switch kind {
		case "kill_node", "kill_leader_node":
			i := rand.N(c.consumerNode())
			if kind == "kill_leader_node" {
				i = c.leaderNode(t)
			}
			c.nodes[i].Kill(t)
			time.Sleep(time.Duration(500+rand.N(2000)) * time.Millisecond)
			c.nodes[i].Start(t)
			faults[kind]++
		case "stop_app":
			n := c.nodes[rand.N(c.consumerNode())]
			n.Ctl(t, "stop_app")
			time.Sleep(time.Duration(200+rand.N(800)) * time.Millisecond)
			n.Ctl(t, "start_app")
			faults[kind]++
		case "cut_node":
			if c.proxies[rand.N(len(c.proxies))].Cut() > 0 {
				faults[kind]++
			}
		case "stall_node":
			d := time.Duration(500+rand.N(2*lease.Milliseconds())) * time.Millisecond
			c.proxies[rand.N(len(c.proxies))].Stall(d)
			time.Sleep(d)
			faults[kind]++
		case "kill":
			name := leader()
			replicas[name].signal(syscall.SIGKILL)
			replicas[name].wait(10 * time.Second)
			startReplica(name)
			faults[kind]++
		case "freeze":
			p := replicas[leader()]
			p.signal(syscall.SIGSTOP)
			time.Sleep(lease + time.Second)
			p.signal(syscall.SIGCONT)
			faults[kind]++
		case "terminate":
			if terminateRelays(c.pool) > 0 {
				faults[kind]++
			}
		case "promote":
			c.promote(t)
			faults[kind]++
		}
		if faults[kind] > before {
			gaps.fault(kind, at)
		}
	}
	c.wrote(t, 100)
	c.stopWrites()
	c.drained(t)
	for _, p := range replicas {
		select {
		case <-p.done:
		default:
			stopClean(t, p)
		}
	}
	total, kinds := faultCounts(faults)
	rep := c.check(t, total*window)
	t.Logf("chaos on a three-node RabbitMQ cluster (quorum queue) and a PostgreSQL pair, for %s: %d faults (%s); %s; longest gap between deliveries %s; longest gap after a fault, by kind: %s",
		*chaosDuration, total, kinds, rep, gaps.longest().Round(time.Millisecond), gaps.afterFaults())
}
