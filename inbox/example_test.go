package inbox_test

import (
	"context"
	"encoding/json"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
)

// OrderPaid is the payload the example consumes.
type OrderPaid struct {
	OrderID    int64 `json:"order_id"`
	TotalCents int64 `json:"total_cents"`
}

// createInvoice is the consumer's handler: its effect, an invoice row, is
// written on tx, so it commits together with the inbox row, exactly once.
func createInvoice(ctx context.Context, tx pgx.Tx, msg inbox.Message) error {
	var paid OrderPaid
	if err := json.Unmarshal(msg.Body, &paid); err != nil {
		return err // retried, then dead-lettered: the body will not get better
	}
	_, err := tx.Exec(ctx,
		`INSERT INTO invoices (order_id, total_cents) VALUES ($1, $2)`,
		paid.OrderID, paid.TotalCents)
	return err
}

// Example consumes a queue whose rejected messages go to a dead-letter
// queue, processes each message once, and prunes the inbox once an hour.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	pool, err := pgxpool.New(ctx, "postgres://billing@db/billing")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	in, err := inbox.New(pool, inbox.Config{
		Consumer:    "billing.invoices",
		Handler:     createInvoice,
		MaxAttempts: 5,
	})
	if err != nil {
		log.Fatal(err)
	}

	// Keep inbox rows for the outbox retention (RELAY_RETENTION, 168h by
	// default) plus the longest outage to survive: here three more days.
	go func() {
		for ctx.Err() == nil {
			if _, err := in.Prune(ctx, 168*time.Hour+72*time.Hour); err != nil && ctx.Err() == nil {
				log.Print(err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Hour):
			}
		}
	}()

	for ctx.Err() == nil {
		// Consume returns nil when ctx ends, and ErrDeliveriesClosed when
		// the connection drops: the broker redelivers what was not acked.
		if err := consume(ctx, in, "amqp://billing@rabbit/"); err != nil {
			log.Printf("consumer stopped: %v; reconnecting", err)
			time.Sleep(time.Second)
		}
	}
}

// consume declares the queues and consumes until ctx ends or the
// connection drops.
func consume(ctx context.Context, in *inbox.Inbox, url string) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	// Rejected messages go to billing.dead through the exchange billing.dlx.
	if err := ch.ExchangeDeclare("billing.dlx", "fanout", true, false, false, false, nil); err != nil {
		return err
	}
	if _, err := ch.QueueDeclare("billing.dead", true, false, false, false, nil); err != nil {
		return err
	}
	if err := ch.QueueBind("billing.dead", "", "billing.dlx", false, nil); err != nil {
		return err
	}
	q, err := ch.QueueDeclare("billing", true, false, false, false, amqp.Table{
		"x-dead-letter-exchange": "billing.dlx",
	})
	if err != nil {
		return err
	}
	if err := ch.QueueBind(q.Name, "orders.paid", "orders", false, nil); err != nil {
		return err
	}
	if err := ch.Qos(32, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(q.Name, "", false /* autoAck: the inbox acks */, false, false, false, nil)
	if err != nil {
		return err
	}
	return in.Consume(ctx, deliveries)
}
