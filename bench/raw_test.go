package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rawPublish publishes n messages from memory with amqp091-go alone, the
// baseline the relay is held against: one connection, `channels`
// confirm-mode channels publishing concurrently, each message on the
// channel its aggregate hashes to (as the relay picks), at most window
// unconfirmed messages per channel (a sliding window: a message goes out as
// soon as the one window places before it is confirmed). The messages carry
// what the relay's carry: persistent, mandatory, message id, type, content
// type, timestamp, the row's header plus aggregate_type, aggregate_id and
// outbox_id, and a 256-byte body. It returns messages per second from the
// first publish to the last confirm, and the CPU spent meanwhile.
func rawPublish(t *testing.T, r *rig, n, channels, window int, cpu *cpuMeter) result {
	t.Helper()
	conn := r.vhost.Dial(t)
	defer conn.Close()
	ids := make([][]int, channels) // message numbers per channel
	for i := range n {
		c := pick("order", aggregateOf(i), channels)
		ids[c] = append(ids[c], i)
	}
	chs := make([]*amqp.Channel, channels)
	for c := range chs {
		chs[c] = confirmChannel(t, conn)
	}
	return r.publishLanes(t, chs, ids, window, cpu)
}

// confirmChannel opens a channel on conn in confirm mode.
func confirmChannel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return ch
}

// publishLanes publishes messages ids[c] on chs[c], all channels at once,
// each with a sliding window, and returns messages per second from the
// first publish to the last confirm, and the CPU spent meanwhile.
func (r *rig) publishLanes(t *testing.T, chs []*amqp.Channel, ids [][]int, window int, cpu *cpuMeter) result {
	t.Helper()
	n := 0
	for _, lane := range ids {
		n += len(lane)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(chs))
	cpu0 := cpu.read()
	begin := time.Now()
	for c := range chs {
		wg.Go(func() { errs[c] = r.publishWindow(chs[c], ids[c], window) })
	}
	wg.Wait()
	elapsed := time.Since(begin)
	used := cpu.read().sub(cpu0)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return result{rate: float64(n) / elapsed.Seconds(), cpu: used}
}

// publishWindow publishes messages ids on ch, each to its queue (queueOf),
// with a sliding window of unconfirmed messages, and waits for the last
// confirms.
func (r *rig) publishWindow(ch *amqp.Channel, ids []int, window int) error {
	ctx := context.Background()
	dcs := make([]*amqp.DeferredConfirmation, len(ids))
	for k, id := range ids {
		if k >= window && !dcs[k-window].Wait() {
			return fmt.Errorf("message %d nacked", ids[k-window])
		}
		var err error
		dcs[k], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", r.queueOf(id), true, false, amqp.Publishing{
			Headers: amqp.Table{"tenant": "acme", "aggregate_type": "order", "aggregate_id": aggregateOf(id),
				"outbox_id": int64(id + 1)},
			ContentType: "application/json", DeliveryMode: amqp.Persistent,
			MessageId: fmt.Sprintf("00000000-0000-4000-8000-%012d", id),
			Timestamp: time.Now(), Type: "OrderPlaced", Body: payload,
		})
		if err != nil {
			return fmt.Errorf("publish message %d: %w", id, err)
		}
	}
	for k := max(0, len(ids)-window); k < len(ids); k++ {
		if !dcs[k].Wait() {
			return fmt.Errorf("message %d nacked", ids[k])
		}
	}
	return nil
}

// aggregateOf is the aggregate id of message i, as rig.fill spreads rows.
func aggregateOf(i int) string { return strconv.Itoa(i % 1000) }

// pick returns the channel of an aggregate the way the relay's RabbitMQ
// publisher does (FNV-1a of type and id), so the raw publisher spreads
// messages over its channels exactly as the relay does.
func pick(typ, id string, n int) int {
	if n == 1 {
		return 0
	}
	h := uint32(2166136261)
	for _, s := range [2]string{typ, id} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
		h = (h ^ 0xff) * 16777619
	}
	return int(h % uint32(n))
}
