package testenv

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// NewRabbitCluster starts n throwaway nodes (NewRabbitServer), each with its
// own node name, ports and data directory, and joins them into one cluster.
// They share an Erlang cookie made for this cluster, which no other node
// has (the machine's own RabbitMQ included). A node that Kill stopped
// rejoins the cluster when Start starts it again. The nodes are killed and
// removed when the test ends.
func NewRabbitCluster(t testing.TB, n int) []*RabbitServer {
	t.Helper()
	cookie := strings.ToUpper(randomName("")) + strings.ToUpper(randomName(""))
	nodes := make([]*RabbitServer, n)
	for i := range nodes {
		nodes[i] = NewRabbitServerWith(t, RabbitOptions{Cookie: cookie})
	}
	for _, s := range nodes[1:] {
		s.Ctl(t, "stop_app")
		s.Ctl(t, "join_cluster", nodes[0].Node)
		s.Ctl(t, "start_app")
	}
	for deadline := time.Now().Add(rabbitReadyTimeout); ; {
		var status struct {
			Running []string `json:"running_nodes"`
		}
		out := nodes[0].Ctl(t, "cluster_status", "--formatter", "json")
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &status); err != nil {
			t.Fatalf("testenv: parse cluster_status: %v\n%s", err, out)
		}
		running := 0
		for _, s := range nodes {
			if slices.Contains(status.Running, s.Node) {
				running++
			}
		}
		if running == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: the cluster of %d nodes did not form: running %v", n, status.Running)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nodes
}

// QueueLeader returns the node that leads quorum queue name (rabbitmqctl
// list_queues), or "" if it has none now.
func (s *RabbitServer) QueueLeader(t testing.TB, name string) string {
	t.Helper()
	for _, line := range strings.Split(s.Ctl(t, "list_queues", "-q", "--no-table-headers", "name", "leader"), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}
