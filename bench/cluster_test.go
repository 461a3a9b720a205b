package bench

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// clusterNodes is the size of the cluster the cluster measurement forms.
const clusterNodes = 3

// measureCluster: the quorum measurement's pair against a RabbitMQ
// cluster of the section's own (testenv.NewRabbitCluster): a 100k backlog
// drained by the relay (one channel, configured with the URLs of all three
// nodes, as RELAY_AMQP_URL would list them) into one quorum queue, which
// the cluster replicates on every node, against the raw publisher (one
// channel, window 1000) to the same queue, in interleaved rounds. Both
// connect to the first node, which leads the queue (clusterRig).
func measureCluster(t *testing.T, s *suite) {
	if why := clusterMissing(); why != "" {
		s.add(row{what: "cluster measurements", figure: "skipped: " + why})
		progress("   skipped: %s", why)
		return
	}
	began := time.Now()
	nodes := testenv.NewRabbitCluster(t, clusterNodes)
	version := nodeVersion(t, nodes[0])
	progress("   %d nodes of RabbitMQ %s clustered in %s", clusterNodes, version, time.Since(began).Round(time.Second))
	var major, minor int
	if _, err := fmt.Sscanf(version, "%d.%d", &major, &minor); err != nil || major < 3 || major == 3 && minor < 8 {
		s.add(row{what: "cluster measurements", figure: "skipped: RabbitMQ " + version + " has no quorum queues (3.8 and later)"})
		return
	}
	// The meter follows one beam process, the suite's broker, which sits
	// idle here: the cluster's nodes are left out of the CPU figures.
	cpu := &cpuMeter{postmaster: s.cpu.postmaster}
	rs := interleave(t, s.mode.rounds, rawClusterRun(nodes, cpu), relayClusterRun(nodes, cpu))
	base := "1 (base)"
	if r1 := s.figures["raw-quorum-1"]; r1 > 0 {
		base += "; " + ratio(rs.median(0), r1) + " raw on one node (quorum rounds)"
	}
	s.add(row{what: fmt.Sprintf("cluster: raw publisher, quorum queue on a %d-node cluster, 1 channel, window 1000, connected to the queue's leader", clusterNodes),
		figure: perSecond(rs.median(0), "msgs/s"), ratio: base})
	s.add(row{what: fmt.Sprintf("cluster: relay drains a 100k backlog into the same queue, 1 channel, the %d nodes' URLs (the leader's first)", clusterNodes),
		figure: perSecond(rs.median(1), "rows/s"), ratio: rs.ratioText(1, 0, "raw"),
		goal: "≥ 0.95 × raw", met: yesNo(rs.ratio(1, 0) >= 0.95)})
	r, l := rs.cpu(0), rs.cpu(1)
	s.add(row{what: fmt.Sprintf("cluster: CPU seconds per 100k messages, 1 channel (%s; the cluster's nodes not measured: the meter follows one beam process)", cpuSharing()),
		figure: "raw: " + cpu.describe(r, backlogRows, "publisher") + "; relay: " + cpu.describe(l, backlogRows, "relay"),
		ratio:  ratio(l.postgres+l.self, r.postgres+r.self) + " raw (PostgreSQL and this process)"})
}

// rawClusterRun is rawRun against the cluster.
func rawClusterRun(nodes []*testenv.RabbitServer, cpu *cpuMeter) run {
	return run{"raw-cluster-quorum-1ch", func(t *testing.T) result {
		r := newClusterRig(t, nodes)
		res := rawPublish(t, r, backlogRows, 1, window, cpu)
		r.checkCount(t, backlogRows)
		return res
	}}
}

// relayClusterRun is relayRun against the cluster.
func relayClusterRun(nodes []*testenv.RabbitServer, cpu *cpuMeter) run {
	return run{"relay-cluster-quorum-1ch", func(t *testing.T) result {
		return relayDrain(t, newClusterRig(t, nodes), backlogRows, 1, false, cpu)
	}}
}

// newClusterRig is newRig on the cluster: a fresh database, and a quorum
// queue of a name of its own in the nodes' default virtual host (they have
// no management plugin to make virtual hosts with), deleted when the test
// ends. The queue is declared through the first node, which therefore
// leads it (the leader locator's default, client-local); the rig dials the
// first node, and the relay is given every node's URL, the first node's
// first, so both publishers talk to the leader.
func newClusterRig(t *testing.T, nodes []*testenv.RabbitServer) *rig {
	t.Helper()
	r := newRig(t, "")
	r.queues = []string{fmt.Sprintf("%s-%d", queueName, time.Now().UnixNano())}
	// Dial uses the URL alone; the virtual host is the nodes' own.
	r.vhost = &testenv.Broker{URL: nodes[0].URL, Vhost: "/"}
	for _, n := range nodes {
		r.brokerURLs = append(r.brokerURLs, n.URL)
	}
	conn := r.vhost.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(r.queues[0], true, false, false, false, amqp.Table{"x-queue-type": quorum}); err != nil {
		t.Fatalf("declare quorum queue on the cluster: %v", err)
	}
	t.Cleanup(func() { deleteQueue(t, nodes[0].URL, r.queues[0]) })
	checkPlacement(t, nodes, r.queues[0])
	return r
}

// checkPlacement fails the test unless every node holds a replica of
// quorum queue name (the default initial group size is the whole cluster),
// and says so if the first node does not lead it.
func checkPlacement(t *testing.T, nodes []*testenv.RabbitServer, name string) {
	t.Helper()
	out := nodes[0].Ctl(t, "list_queues", "-q", "--no-table-headers", "name", "leader", "members")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != name {
			continue
		}
		for _, n := range nodes {
			if !strings.Contains(strings.Join(f[2:], " "), n.Node) {
				t.Fatalf("quorum queue %s has no replica on %s: %s", name, n.Node, line)
			}
		}
		if f[1] != nodes[0].Node {
			progress("   queue %s is led by %s, not by %s, which both publishers connect to", name, f[1], nodes[0].Node)
		}
		return
	}
	t.Fatalf("quorum queue %s not listed by rabbitmqctl list_queues:\n%s", name, out)
}

// deleteQueue deletes queue name, messages and all, so the cluster's
// nodes do not carry every run's messages into the next.
func deleteQueue(t *testing.T, url, name string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Errorf("delete queue %s: %v", name, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDelete(name, false, false, false)
	}
	if err != nil {
		t.Errorf("delete queue %s: %v", name, err)
	}
}

// nodeVersion returns the RabbitMQ version node s announces, or "?".
func nodeVersion(t *testing.T, s *testenv.RabbitServer) string {
	conn, err := amqp.Dial(s.URL)
	if err != nil {
		t.Fatalf("dial cluster node %s: %v", s.Node, err)
	}
	defer conn.Close()
	if v, ok := conn.Properties["version"].(string); ok {
		return v
	}
	return "?"
}

// clusterMissing says why testenv.NewRabbitCluster cannot start nodes on
// this machine (where it would fail the test), or returns "".
func clusterMissing() string {
	found := false
	for _, dir := range []string{"/usr/lib/rabbitmq/bin", lookDir("rabbitmq-server")} {
		if dir != "" && executable(filepath.Join(dir, "rabbitmq-server")) && executable(filepath.Join(dir, "rabbitmqctl")) {
			found = true
			break
		}
	}
	if !found {
		return "no rabbitmq-server and rabbitmqctl (in /usr/lib/rabbitmq/bin or on PATH) to start the cluster's nodes with; install rabbitmq-server"
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("rabbitmq"); err != nil {
			return "running as root, but there is no rabbitmq user to run the cluster's nodes as"
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			return "running as root, but there is no runuser to run the cluster's nodes as the rabbitmq user with"
		}
	}
	return ""
}

// lookDir returns the directory of the program on PATH, symbolic links
// resolved, or "".
func lookDir(program string) string {
	p, err := exec.LookPath(program)
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(p); err == nil {
		p = real
	}
	return filepath.Dir(p)
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
