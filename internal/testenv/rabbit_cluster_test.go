package testenv

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestRabbitCluster forms a three-node cluster, declares a quorum queue,
// kills the node that leads it and checks that another takes over and the
// queue keeps its confirmed message, then brings the node back.
func TestRabbitCluster(t *testing.T) {
	t.Parallel()
	began := time.Now()
	nodes := NewRabbitCluster(t, 3)
	t.Logf("three nodes clustered in %s", time.Since(began).Round(time.Millisecond))
	conn, err := amqp.Dial(nodes[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("q", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", "q", true, false, amqp.Publishing{Body: []byte("kept")})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
		t.Fatalf("confirm: %v %v", ok, err)
	}
	conn.Close()
	leader := nodes[0].QueueLeader(t, "q")
	var dead, alive *RabbitServer
	for _, n := range nodes {
		if n.Node == leader {
			dead = n
		} else {
			alive = n
		}
	}
	if dead == nil {
		t.Fatalf("no node leads q (leader %q)", leader)
	}
	dead.Kill(t)
	deadline := time.Now().Add(30 * time.Second)
	for l := alive.QueueLeader(t, "q"); l == leader || l == ""; l = alive.QueueLeader(t, "q") {
		if time.Now().After(deadline) {
			t.Fatalf("no new leader of q after killing %s", leader)
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn, err = amqp.Dial(alive.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	m, ok, err := ch.Get("q", true)
	if err != nil || !ok || string(m.Body) != "kept" {
		t.Fatalf("after the leader died: get = %q, %v, %v; want the confirmed message", m.Body, ok, err)
	}
	dead.Start(t)
}
