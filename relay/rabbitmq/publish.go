package rabbitmq

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
)

// ReturnedError is a message the broker returned as unroutable (mandatory
// flag): no queue was bound for its exchange and routing key.
type ReturnedError struct {
	MessageID  string
	Exchange   string
	RoutingKey string
	Code       uint16
	Text       string
}

// Unwrap makes a returned message a rejected one: the row's own failure.
func (e *ReturnedError) Unwrap() error { return relay.ErrRejected }

func (e *ReturnedError) Error() string {
	return fmt.Sprintf("message %s returned by the broker: %d %s (exchange %q, routing key %q)",
		e.MessageID, e.Code, e.Text, e.Exchange, e.RoutingKey)
}

// ErrNacked means the broker nacked a message: it could not take
// responsibility for it (an internal error in the queue).
var ErrNacked = errors.New("broker nacked the message")

// Publish implements relay.Publisher: it sends msgs on the current
// confirm-mode channel, persistent and mandatory, and returns at once.
func (b *Broker) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	ch, err := b.channel()
	if err != nil {
		return &confirmation{b: b, sendErr: err, done: closedChan}
	}
	c := &confirmation{b: b, ch: ch, ids: make([]string, 0, len(msgs)), dcs: make([]*amqp.DeferredConfirmation, 0, len(msgs))}
	for i := range msgs {
		m := &msgs[i]
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.RoutingKey, true, false, amqp.Publishing{
			Headers:      amqp.Table(m.Headers),
			ContentType:  m.ContentType,
			DeliveryMode: amqp.Persistent,
			MessageId:    m.MessageID,
			Timestamp:    m.Timestamp,
			Type:         m.Type,
			Body:         m.Body,
		})
		if err != nil {
			c.sendErr = fmt.Errorf("publish message %s: %w", m.MessageID, err)
			b.fail(ch)
			break
		}
		c.ids = append(c.ids, m.MessageID)
		c.dcs = append(c.dcs, dc)
	}
	c.done = closedChan
	if len(c.dcs) > 0 && c.sendErr == nil {
		c.done = c.dcs[len(c.dcs)-1].Done()
	}
	return c
}

// Reset implements relay.Publisher: it closes the current connection, so the
// next Publish starts on a fresh one with no confirms or returns pending.
func (b *Broker) Reset() {
	b.mu.Lock()
	conn := b.detachLocked()
	b.broken = false
	b.mu.Unlock()
	_ = closeConn(conn)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// confirmation is one Publish call's answer.
type confirmation struct {
	b       *Broker
	ch      *channel
	ids     []string // message ids sent, in order
	dcs     []*amqp.DeferredConfirmation
	sendErr error // why fewer messages were sent than asked
	done    <-chan struct{}
}

func (c *confirmation) Done() <-chan struct{} { return c.done }

// Wait implements relay.Confirmation. It reads returns while it waits, so
// the client never blocks on a full return queue.
func (c *confirmation) Wait(ctx context.Context) (int, error) {
	acked := 0
	var err error
wait:
	for i, dc := range c.dcs {
		for {
			select {
			case <-dc.Done():
				if dc.Acked() {
					acked++
					continue wait
				}
				// A closing channel resolves every outstanding confirm
				// as a nack; report it as what it is.
				if c.ch.IsClosed() {
					err = c.ch.closedError(c.b, c.ids[i])
				} else {
					// On a live channel a nack is about this message
					// (e.g. a full queue that rejects publishes).
					err = fmt.Errorf("%w: message %s: %w", relay.ErrRejected, c.ids[i], ErrNacked)
				}
				break wait
			case r, ok := <-c.ch.returns:
				if ok {
					c.ch.returned(r)
				}
			case <-ctx.Done():
				err = fmt.Errorf("waiting for confirms: %w", context.Cause(ctx))
				break wait
			}
		}
	}
	n := acked
	if c.ch != nil {
		// A return precedes its message's ack, so the returns of every
		// acked message are queued by now.
		c.ch.drainReturns()
		for i := range acked {
			if r, ok := c.ch.takeReturn(c.ids[i]); ok {
				n = i
				err = &ReturnedError{MessageID: r.MessageId, Exchange: r.Exchange, RoutingKey: r.RoutingKey, Code: r.ReplyCode, Text: r.ReplyText}
				break
			}
		}
	}
	if err == nil && n == len(c.dcs) {
		err = c.sendErr
	}
	if err != nil && c.ch != nil {
		// Whatever follows on this channel is in doubt or out of order:
		// the core republishes from its recorded position on a new one.
		c.b.fail(c.ch)
	}
	return n, err
}
