package ledger

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Consumer feeds every message of a queue into a Ledger, reconnecting when
// its connection is closed (tests close broker connections on purpose).
//
// It acks after recording. A message redelivered because the consumer's own
// connection dropped before its ack (Redelivered set) is not counted again:
// that duplicate is the test consumer's, not the relay's.
type Consumer struct {
	URL string
	// Others are tried in turn after URL when it cannot be reached (the
	// other nodes of a cluster).
	Others []string
	Queue  string
	Ledger *Ledger
	// Observe, if set, runs at every delivery (to measure gaps).
	Observe func()
}

// Run consumes until ctx ends.
func (c *Consumer) Run(ctx context.Context) {
	seen := map[string]bool{}
	urls := append([]string{c.URL}, c.Others...)
	for i := 0; ctx.Err() == nil; i++ {
		c.consume(ctx, urls[i%len(urls)], seen)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Consumer) consume(ctx context.Context, url string, seen map[string]bool) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	if err := ch.Qos(500, 0, false); err != nil {
		return
	}
	deliveries, err := ch.ConsumeWithContext(ctx, c.Queue, "", false, false, false, false, nil)
	if err != nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			if c.Observe != nil {
				c.Observe()
			}
			if !(d.Redelivered && seen[d.MessageId]) {
				c.Ledger.Delivered(d.MessageId, d.Body)
				seen[d.MessageId] = true
			}
			_ = d.Ack(false)
		}
	}
}
