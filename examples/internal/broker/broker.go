// Package broker connects the example programs to RabbitMQ and declares
// their exchanges and queues. Whatever it declares is durable and never
// deleted by the broker on its own, so that events wait in their queues
// while a consumer is down; the programs' teardown commands delete them.
package broker

import (
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// dialTimeout bounds the connection to the broker, TLS and AMQP handshake
// included.
const dialTimeout = 10 * time.Second

// Dial connects to the broker at url under the connection name name, so
// that each part of an example shows up as itself in the broker's
// management UI.
func Dial(url, name string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Dial:       amqp.DefaultDial(dialTimeout),
		Properties: amqp.Table{"connection_name": name},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to broker as %s: %w", name, err)
	}
	return conn, nil
}

// Channel connects like [Dial] and opens one channel on the connection.
// The returned function closes both.
func Channel(url, name string) (*amqp.Channel, func(), error) {
	conn, err := Dial(url, name)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	return ch, func() { conn.Close() }, nil
}

// DeclareExchange declares the durable exchange name of the given kind
// (amqp.ExchangeTopic, amqp.ExchangeFanout, ...). Declaring it again is a
// no-op.
func DeclareExchange(ch *amqp.Channel, name, kind string) error {
	if err := ch.ExchangeDeclare(name, kind, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", name, err)
	}
	return nil
}

// DeclareQueue declares the durable queue with the arguments args (nil
// for none) and binds it to exchange with the binding key key. Declaring
// it again with the same arguments is a no-op; with others, the broker
// refuses it and closes the channel.
func DeclareQueue(ch *amqp.Channel, queue string, args amqp.Table, exchange, key string) error {
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %s: %w", queue, err)
	}
	if err := ch.QueueBind(queue, key, exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", queue, exchange, err)
	}
	return nil
}
