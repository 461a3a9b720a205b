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
// confirm-mode channels, persistent and mandatory, and returns at once. With
// several channels, each message goes over the one its aggregate hashes to.
func (b *Broker) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	chs, err := b.channels()
	if err != nil {
		return &confirmation{b: b, sendErr: err, done: closedChan}
	}
	c := &confirmation{b: b, chs: chs, sent: make([]sent, 0, len(msgs))}
	for i := range msgs {
		m := &msgs[i]
		ch := chs[pick(m.Aggregate, len(chs))]
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
		c.sent = append(c.sent, sent{id: m.MessageID, ch: ch, dc: dc})
	}
	c.done = closedChan
	if len(c.sent) > 0 && c.sendErr == nil {
		c.done = c.allDone()
	}
	return c
}

// Connect implements relay.Publisher: it opens the connection and channels
// unless they are open. After a failure it waits for Reset like Publish.
func (b *Broker) Connect(ctx context.Context) error {
	_, err := b.channels()
	return err
}

// pick returns the channel of an aggregate: FNV-1a of its type and id.
func pick(a relay.Aggregate, n int) int {
	if n == 1 {
		return 0
	}
	h := uint32(2166136261)
	for _, s := range [2]string{a.Type, a.ID} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
		h = (h ^ 0xff) * 16777619 // separates ("ab","c") from ("a","bc")
	}
	return int(h % uint32(n))
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
	chs     []*channel
	sent    []sent
	sendErr error // why fewer messages were sent than asked
	done    <-chan struct{}
}

// sent is one message sent: its id, channel and confirm.
type sent struct {
	id string
	ch *channel
	dc *amqp.DeferredConfirmation
}

func (c *confirmation) Done() <-chan struct{} { return c.done }

// allDone returns a channel closed once the last message sent on each
// channel is answered; confirms come in order on a channel.
func (c *confirmation) allDone() <-chan struct{} {
	last := map[*channel]*amqp.DeferredConfirmation{}
	for _, s := range c.sent {
		last[s.ch] = s.dc
	}
	if len(last) == 1 {
		return c.sent[len(c.sent)-1].dc.Done()
	}
	done := make(chan struct{})
	go func() {
		for _, dc := range last {
			<-dc.Done()
		}
		close(done)
	}()
	return done
}

// Wait implements relay.Confirmation. It reads returns while it waits, so
// the client never blocks on a full return queue.
func (c *confirmation) Wait(ctx context.Context) (int, error) {
	acked := 0
	var err error
wait:
	for _, s := range c.sent {
		for {
			select {
			case <-s.dc.Done():
				if s.dc.Acked() {
					acked++
					continue wait
				}
				// A closing channel resolves every outstanding confirm
				// as a nack; report it as what it is.
				if s.ch.IsClosed() {
					err = s.ch.closedError(c.b, s.id)
				} else {
					// On a live channel a nack is about this message
					// (e.g. a full queue that rejects publishes).
					err = fmt.Errorf("%w: message %s: %w", relay.ErrRejected, s.id, ErrNacked)
				}
				break wait
			case r, ok := <-s.ch.returns:
				if ok {
					s.ch.returned(r)
				}
			case <-ctx.Done():
				err = fmt.Errorf("waiting for confirms: %w", context.Cause(ctx))
				break wait
			}
		}
	}
	n := acked
	// A return precedes its message's ack on its channel, so the returns
	// of every acked message are queued by now.
	for _, ch := range c.chs {
		ch.drainReturns()
	}
	for i, s := range c.sent[:acked] {
		if r, ok := s.ch.takeReturn(s.id); ok {
			n = i
			err = &ReturnedError{MessageID: r.MessageId, Exchange: r.Exchange, RoutingKey: r.RoutingKey, Code: r.ReplyCode, Text: r.ReplyText}
			break
		}
	}
	if err == nil && n == len(c.sent) {
		err = c.sendErr
	}
	if err != nil && len(c.chs) > 0 {
		// Whatever follows on these channels is in doubt or out of
		// order: the core republishes from its recorded position on a
		// new connection.
		c.b.fail(c.chs[0])
	}
	return n, err
}
