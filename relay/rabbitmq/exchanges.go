package rabbitmq

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
)

// A message to an exchange that does not exist makes the broker close its
// channel (404), and with it every unconfirmed message behind it, which
// are then sent again. So the first message to each exchange on a
// connection is preceded by a passive declare on a channel of its own: a
// missing exchange refuses only that message, and the channels that carry
// messages go on. An exchange deleted later still closes the channel; the
// core then finds the culprit by sending it alone.

// errMissingExchange refuses a message to an exchange that does not exist.
var errMissingExchange = errors.New("exchange does not exist")

// checkExchange reports whether exchange exists, asking the broker the
// first time on this connection. A missing one is asked about again next
// time: it may have been created meanwhile. err is a connection failure.
func (b *Broker) checkExchange(exchange string) (exists bool, err error) {
	if exchange == "" {
		return true, nil // the default exchange always exists
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exchanges[exchange] {
		return true, nil
	}
	if b.conn == nil || b.conn.IsClosed() {
		return false, fmt.Errorf("check exchange %q: %w", exchange, amqp.ErrClosed)
	}
	if b.probe == nil || b.probe.IsClosed() {
		ch, err := b.conn.Channel()
		if err != nil {
			return false, fmt.Errorf("open a channel to check exchanges: %w", err)
		}
		b.probe = ch
	}
	err = b.probe.ExchangeDeclarePassive(exchange, amqp.ExchangeDirect, false, false, false, false, nil)
	var ae *amqp.Error
	switch {
	case err == nil:
		if b.exchanges == nil {
			b.exchanges = map[string]bool{}
		}
		b.exchanges[exchange] = true
		return true, nil
	case errors.As(err, &ae) && ae.Code == amqp.NotFound:
		b.probe = nil // the broker closed it
		return false, nil
	default:
		return false, fmt.Errorf("check exchange %q: %w", exchange, err)
	}
}

// missingExchange is the refusal of a message to a missing exchange.
func missingExchange(m *relay.Message) error {
	return fmt.Errorf("%w: message %s: %w: %q (404 NOT_FOUND, checked before sending)", relay.ErrRejected, m.MessageID, errMissingExchange, m.Exchange)
}
