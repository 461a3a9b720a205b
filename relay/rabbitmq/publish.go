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

func (e *ReturnedError) Error() string {
	return fmt.Sprintf("message %s returned by the broker: %d %s (exchange %q, routing key %q)",
		e.MessageID, e.Code, e.Text, e.Exchange, e.RoutingKey)
}

// ErrNacked means the broker nacked a message: it could not take
// responsibility for it (an internal error in the queue).
var ErrNacked = errors.New("broker nacked the message")

// Publish implements relay.Publisher. It publishes msgs in order, waits for
// every confirm (or for ctx), and returns the length of the leading run that
// was acked and not returned. Any failure other than a return or nack
// replaces the channel, so the next call starts on a fresh one.
func (b *Broker) Publish(ctx context.Context, msgs []relay.Message) (int, error) {
	ch, err := b.channel()
	if err != nil {
		return 0, err
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	var pubErr error
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
			pubErr = fmt.Errorf("publish message %s: %w", m.MessageID, err)
			break
		}
		confirms = append(confirms, dc)
	}

	// Wait for confirms in order, reading returns meanwhile.
	returned := map[string]amqp.Return{}
	readReturn := func(r amqp.Return, ok bool) {
		if ok {
			returned[r.MessageId] = r
		}
	}
	acked := 0
	var waitErr error
wait:
	for i, dc := range confirms {
		for {
			select {
			case <-dc.Done():
				if !dc.Acked() {
					// A closing channel resolves every outstanding
					// confirm as a nack; report it as what it is.
					if ch.IsClosed() {
						waitErr = fmt.Errorf("channel closed before message %s was confirmed: %w", msgs[i].MessageID, amqp.ErrClosed)
					} else {
						waitErr = fmt.Errorf("message %s: %w", msgs[i].MessageID, ErrNacked)
					}
					break wait
				}
				acked++
				continue wait
			case r, ok := <-ch.returns:
				readReturn(r, ok)
			case <-ctx.Done():
				waitErr = fmt.Errorf("waiting for confirms: %w", ctx.Err())
				break wait
			}
		}
	}
	// A return precedes its ack, so every return of an acked message is
	// already queued.
	for drained := false; !drained; {
		select {
		case r, ok := <-ch.returns:
			readReturn(r, ok)
			drained = !ok
		default:
			drained = true
		}
	}

	n := acked
	for i := 0; i < acked; i++ {
		if r, ok := returned[msgs[i].MessageID]; ok {
			n = i
			waitErr = &ReturnedError{MessageID: r.MessageId, Exchange: r.Exchange, RoutingKey: r.RoutingKey, Code: r.ReplyCode, Text: r.ReplyText}
			break
		}
	}
	if n == len(msgs) {
		return n, nil
	}
	if ch.IsClosed() || pubErr != nil || ctx.Err() != nil {
		// The channel is unusable or holds unconfirmed messages: start
		// the next call on a fresh one.
		b.dropChannel(ch)
	}
	if waitErr == nil {
		waitErr = pubErr
	}
	if waitErr == nil && ch.IsClosed() {
		waitErr = amqp.ErrClosed
	}
	return n, waitErr
}

// dropChannel discards ch if it is still the current channel.
func (b *Broker) dropChannel(ch *channel) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == ch {
		_ = ch.Close()
		b.ch = nil
	}
}
