package rabbitmq

import (
	"errors"
	"fmt"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

func newBrokerChannels(t *testing.T, url string, channels int) *Broker {
	t.Helper()
	b, err := New(Config{URLs: []string{url}, Channels: channels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// aggMessage is message i of aggregate agg, with its sequence number in the
// aggregate as outbox_id.
func aggMessage(i, agg, seq int, key string) relay.Message {
	m := message(i, "amq.direct", key)
	m.Aggregate = relay.Aggregate{Type: "t", ID: fmt.Sprint(agg)}
	m.Headers = map[string]any{"aggregate_id": m.Aggregate.ID, "seq": int64(seq)}
	return m
}

// TestChannelsKeepEachAggregateInOrder: over four channels, messages of
// many aggregates interleave, but each aggregate's arrive in order, and
// every message is confirmed.
func TestChannelsKeepEachAggregateInOrder(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	queue := env.DeclareQueue(t, "amq.direct", "k")
	b := newBrokerChannels(t, env.URL, 4)

	const aggs, per = 13, 40
	var msgs []relay.Message
	seq := map[int]int{}
	for i := range aggs * per {
		agg := (i * 7) % aggs
		msgs = append(msgs, aggMessage(i, agg, seq[agg], "k"))
		seq[agg]++
	}
	for start := 0; start < len(msgs); start += 100 {
		batch := msgs[start:min(start+100, len(msgs))]
		if n, err := publish(b, batch); n != len(batch) || err != nil {
			t.Fatalf("Publish = %d, %v", n, err)
		}
	}
	used := map[int]bool{}
	for a := range aggs {
		used[pick(relay.Aggregate{Type: "t", ID: fmt.Sprint(a)}, 4)] = true
	}
	if len(used) < 2 {
		t.Fatalf("all %d aggregates hash to one channel: the test would prove nothing", aggs)
	}

	next := map[string]int64{}
	for _, d := range consume(t, env.Dial(t), queue, len(msgs)) {
		agg, s := d.Headers["aggregate_id"].(string), d.Headers["seq"].(int64)
		if s != next[agg] {
			t.Fatalf("aggregate %s: message %d arrived when %d was due", agg, s, next[agg])
		}
		next[agg]++
	}
}

// TestChannelsAnswerEachMessage: a message returned on one channel is the
// answer for that message alone, whatever the other channels confirmed
// around it, and the channels go on.
func TestChannelsAnswerEachMessage(t *testing.T) {
	t.Parallel()
	env := testenv.NewBroker(t)
	env.DeclareQueue(t, "amq.direct", "k")
	b := newBrokerChannels(t, env.URL, 3)

	var msgs []relay.Message
	for i := range 30 {
		key := "k"
		if i == 17 {
			key = "nobody"
		}
		msgs = append(msgs, aggMessage(i, i, 0, key))
	}
	answers := answer(t, b, msgs)
	for i, a := range answers {
		var ret *ReturnedError
		switch {
		case i == 17 && !(errors.As(a.Refused, &ret) && ret.MessageID == msgs[17].MessageID && errors.Is(a.Refused, relay.ErrRejected)):
			t.Errorf("message 17: %+v, want returned", a)
		case i != 17 && !a.Confirmed:
			t.Errorf("message %d: %+v, want confirmed", i, a)
		}
	}
	if n, err := publish(b, msgs[18:]); n != len(msgs)-18 || err != nil {
		t.Fatalf("Publish after the return = %d, %v; want the channels still open", n, err)
	}
}

func TestChannelsConfig(t *testing.T) {
	for _, n := range []int{-1, maxChannels + 1} {
		if _, err := New(Config{URLs: []string{"amqp://localhost/"}, Channels: n}); err == nil {
			t.Errorf("Channels %d accepted", n)
		}
	}
}
