package testenv

import (
	"errors"
	"os"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestRabbitServer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	var dir string
	var pids []int // beam.smp and its helpers
	t.Run("PublishAndMemoryAlarm", func(t *testing.T) {
		start := time.Now()
		s := NewRabbitServer(t)
		t.Logf("started %s in %v", s.Node, time.Since(start).Round(time.Millisecond))
		dir = s.dir
		if pid := s.beamPID(); pid == 0 {
			t.Error("no pid in the node's pid file")
		} else {
			pids = append([]int{pid}, descendants(pid)...)
		}

		conn, err := amqp.Dial(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.PublishWithContext(ctx, "", q.Name, false, false, amqp.Publishing{Body: []byte("hello")}); err != nil {
			t.Fatal(err)
		}
		var msg amqp.Delivery
		var ok bool
		for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
			if msg, ok, err = ch.Get(q.Name, true); err != nil {
				t.Fatal(err)
			}
			if !ok {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if !ok || string(msg.Body) != "hello" {
			t.Fatalf("got message %q (ok %v), want \"hello\"", msg.Body, ok)
		}

		start = time.Now()
		s.Ctl(t, "set_vm_memory_high_watermark", "0.000001")
		t.Logf("rabbitmqctl took %v", time.Since(start).Round(time.Millisecond))

		blockedConn, err := amqp.Dial(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer blockedConn.Close()
		blocked := blockedConn.NotifyBlocked(make(chan amqp.Blocking, 4))
		bch, err := blockedConn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		// The broker blocks a connection when it publishes during the alarm.
		if err := bch.PublishWithContext(ctx, "", q.Name, false, false, amqp.Publishing{Body: []byte("blocked")}); err != nil {
			t.Fatal(err)
		}
		waitBlocking(t, blocked, true)

		s.Ctl(t, "set_vm_memory_high_watermark", "0.4")
		waitBlocking(t, blocked, false)
	})
	t.Run("StopsAndRemovesNodeAtCleanup", func(t *testing.T) {
		if dir == "" {
			t.Skip("node did not start")
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory %s still exists after cleanup (err %v)", dir, err)
		}
		for _, pid := range pids {
			if !processExited(pid) {
				t.Errorf("process %d of the node still running after cleanup", pid)
			}
		}
	})
}

// waitBlocking waits up to 10 s for a connection.blocked (active) or
// connection.unblocked (!active) notification on c.
func waitBlocking(t *testing.T, c <-chan amqp.Blocking, active bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case b, ok := <-c:
			if !ok {
				t.Fatalf("connection closed waiting for blocked=%v", active)
			}
			if b.Active == active {
				t.Logf("got %+v", b)
				return
			}
		case <-timeout:
			t.Fatalf("no notification with blocked=%v within 10 s", active)
		}
	}
}
