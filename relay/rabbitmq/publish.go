package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"time"

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
// responsibility for it (a full queue that rejects publishes, a quorum
// queue without a leader, an internal error in the queue).
var ErrNacked = errors.New("broker nacked the message")

// A quorum queue nacks everything sent to it while it elects a new leader
// (its leader's node died), which is no row's fault: parking every row, one
// aggregate after another, would stall every aggregate behind a retry of
// one row at a time. So a nack storm is in doubt instead, and the relay
// sends those messages again from its position. A storm starts with a call
// of several messages that the broker nacks whole, with no ack among them,
// or with any call nacked whole within stormGap of a connection lost (the
// relay then probes one row at a time on a new one, as when the node it
// used died, maybe with the queue's leader);
// while it lasts (the next such nack within stormGap, no ack), later calls
// nacked whole are in doubt too, the one-row probes after a reset among
// them, for at most nackGrace from its start. Any other nack is the row's
// own and parks it: a single row for a full queue that rejects publishes,
// a parked row retried alone, nacks among acks.
const (
	nackGrace = 10 * time.Second
	stormGap  = 2 * time.Second
)

// nackStorm is a run of calls the broker nacked whole.
type nackStorm struct {
	since, last time.Time // zero: no storm
}

// wholeNacks makes the nacks of a call that got no ack at all messages in
// doubt during a nack storm (nackStorm), and says so.
func (c *confirmation) wholeNacks() error {
	acked, nacked := 0, 0
	for _, s := range c.sent {
		switch a := c.answers[s.index]; {
		case a.Confirmed:
			acked++
		case errors.Is(a.Refused, ErrNacked):
			nacked++
		}
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	st, now := &b.storm, time.Now()
	switch {
	case acked > 0 || nacked == 0:
		*st = nackStorm{}
		return nil
	case !st.since.IsZero() && now.Sub(st.last) < stormGap:
		st.last = now // the storm goes on
	case nacked > 1 || now.Sub(b.lostAt) < stormGap:
		*st = nackStorm{since: now, last: now} // a storm starts
	default:
		*st = nackStorm{}
		return nil // one row's nack
	}
	if now.Sub(st.since) >= nackGrace {
		return nil // too long for an election: the rows' own
	}
	for _, s := range c.sent {
		if errors.Is(c.answers[s.index].Refused, ErrNacked) {
			c.answers[s.index].Refused = nil
		}
	}
	return fmt.Errorf("the broker nacked all %d messages of the call, as a quorum queue does while it elects a leader; sending them again: %w", nacked, ErrNacked)
}

// Publish implements relay.Publisher: it sends msgs on the current
// confirm-mode channels, persistent and mandatory, and returns at once. With
// several channels, each message goes over the one its aggregate hashes to.
// A message that AMQP cannot carry (a field or header name over 255
// bytes, a header frame larger than the connection's frame size) is not
// sent: its answer says why, and the others go out, since the client would
// otherwise tear the connection down on it. Neither is a message to an
// exchange that does not exist (exchanges.go).
func (b *Broker) Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation {
	c := &confirmation{b: b, answers: make([]relay.Answer, len(msgs)), done: closedChan}
	chs, frameMax, err := b.channels()
	if err != nil {
		c.sendErr = err
		return c
	}
	c.chs = chs
	c.sent = make([]sent, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if err := fits(m, frameMax); err != nil {
			c.answers[i].Refused = fmt.Errorf("%w: %w: message %s: %w", relay.ErrRejected, relay.ErrInvalid, m.MessageID, err)
			continue
		}
		if ok, err := b.checkExchange(m.Exchange); err != nil {
			c.sendErr = err
			break
		} else if !ok {
			c.answers[i].Refused = missingExchange(m)
			continue
		}
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
		c.sent = append(c.sent, sent{index: i, id: m.MessageID, ch: ch, dc: dc})
	}
	if len(c.sent) > 0 && c.sendErr == nil {
		c.done = c.allDone()
	}
	return c
}

// Connect implements relay.Publisher: it opens the connection and channels
// unless they are open. After a failure it waits for Reset like Publish.
func (b *Broker) Connect(ctx context.Context) error {
	_, _, err := b.channels()
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
	answers []relay.Answer // one per message; refused ones filled in by Publish
	sent    []sent
	sendErr error // why messages after the last sent were not sent
	done    <-chan struct{}
}

// sent is one message sent: its index in the call, id, channel and confirm.
type sent struct {
	index int
	id    string
	ch    *channel
	dc    *amqp.DeferredConfirmation
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
// the client never blocks on a full return queue. A return or a nack on a
// live channel is the answer for that message alone; the channel goes on.
// Only messages in doubt (a channel or connection that closed under them, a
// failure to send, ctx) make the connection be dropped, so that nothing
// after them overtakes their republishing.
func (c *confirmation) Wait(ctx context.Context) ([]relay.Answer, error) {
	var err error
wait:
	for _, s := range c.sent {
		for {
			select {
			case <-s.dc.Done():
				switch {
				case s.dc.Acked():
					c.answers[s.index].Confirmed = true
				case !s.ch.IsClosed():
					// On a live channel a nack is about this message
					// (e.g. a full queue that rejects publishes).
					c.answers[s.index].Refused = fmt.Errorf("%w: message %s: %w", relay.ErrRejected, s.id, ErrNacked)
				case err == nil:
					// A closing channel resolves every outstanding
					// confirm as a nack: in doubt. Say why once.
					err = s.ch.closedError(c.b, s.id)
				}
				continue wait
			case r, ok := <-s.ch.returns:
				if ok {
					s.ch.returned(r)
				}
			case <-ctx.Done():
				if err == nil {
					err = fmt.Errorf("waiting for confirms: %w", context.Cause(ctx))
				}
				break wait
			}
		}
	}
	// A return precedes its message's ack on its channel, so the returns
	// of every acked message are queued by now.
	for _, ch := range c.chs {
		ch.drainReturns()
	}
	for _, s := range c.sent {
		if r, ok := s.ch.takeReturn(s.id); ok && c.answers[s.index].Confirmed {
			c.answers[s.index] = relay.Answer{Refused: &ReturnedError{MessageID: r.MessageId, Exchange: r.Exchange,
				RoutingKey: r.RoutingKey, Code: r.ReplyCode, Text: r.ReplyText}}
		}
	}
	if err == nil {
		err = c.sendErr
	}
	if err == nil {
		err = c.wholeNacks()
	}
	for _, a := range c.answers {
		if !a.Confirmed && a.Refused == nil {
			if len(c.chs) > 0 {
				// Whatever follows on these channels is in doubt or out
				// of order: the core republishes from its recorded
				// position on a new connection.
				c.b.fail(c.chs[0])
			}
			if err == nil {
				err = errors.New("messages left unanswered")
			}
			return c.answers, err
		}
	}
	return c.answers, nil
}
