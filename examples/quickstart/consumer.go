package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/examples/internal/cli"
)

// drainTimeout bounds the wait, after the stop signal, for the relay to
// deliver every committed event before the consumer declares the rest lost.
const drainTimeout = 10 * time.Second

// The consumer reads the outbox table only to audit the run: a real consumer
// knows nothing but its queue. Rolled-back events are found in the demo's
// own bookkeeping table, since the outbox never saw them commit.
const (
	countCommittedSQL  = `SELECT count(*) FROM outbox WHERE aggregate_type = 'order'`
	countRolledBackSQL = `SELECT count(*) FROM demo_rolled_back`
	committedIDsSQL    = `SELECT event_id::text FROM outbox WHERE aggregate_type = 'order'`
	rolledBackIDsSQL   = `SELECT event_id::text FROM demo_rolled_back`
)

// consumer prints each delivery and keeps the tally.
type consumer struct {
	db  *pgx.Conn
	out io.Writer
	t   *tally
}

// runConsumer consumes until ctx ends, then drains and prints the summary.
// It returns cli.ErrCheckFailed when an event was lost, unexpected or out of
// order.
func runConsumer(ctx context.Context, cfg config, out io.Writer) error {
	db, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer db.Close(context.Background())
	ch, closeBroker, err := openTopology(cfg)
	if err != nil {
		return err
	}
	defer closeBroker()
	if err := ch.Qos(200, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	// Not ConsumeWithContext: deliveries must keep flowing while draining,
	// after ctx has ended.
	deliveries, err := ch.Consume(cfg.Queue, "quickstart", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Queue, err)
	}
	c := &consumer{db: db, out: out, t: newTally()}
	fmt.Fprintf(out, "consumer: consuming %s (bound to %s with orders.#), manual ack\n", cfg.Queue, cfg.Exchange)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("broker closed the consumer's channel")
			}
			c.handle(d)
		case <-tick.C:
			c.status()
		case <-ctx.Done():
		}
	}
	return c.drainAndSummarize(deliveries)
}

// handle records, prints and acknowledges one delivery. The ack comes after
// recording, so an event is never acknowledged unseen.
func (c *consumer) handle(d amqp.Delivery) {
	var ev orderEvent
	if err := json.Unmarshal(d.Body, &ev); err != nil {
		c.t.malformed++
		fmt.Fprintf(c.out, "consumer: malformed body of %s: %v\n", d.MessageId, err)
		_ = d.Ack(false)
		return
	}
	// aggregate_id is the relay's ordering key, set on every message.
	agg, _ := d.Headers["aggregate_id"].(string)
	times, expected := c.t.record(d.MessageId, agg, ev.Seq)
	note := ""
	switch {
	case times > 1:
		note = fmt.Sprintf("  DUPLICATE (delivery #%d of this message_id)", times)
	case expected > 0:
		note = fmt.Sprintf("  OUT OF ORDER (expected seq %d)", expected)
	}
	fmt.Fprintf(c.out, "consumer: %.8s  %-12s  order %-5s seq %d%s\n", d.MessageId, d.Type, agg, ev.Seq, note)
	if err := d.Ack(false); err != nil {
		fmt.Fprintf(c.out, "consumer: ack %s: %v\n", d.MessageId, err)
	}
}

// status prints the live count line.
func (c *consumer) status() {
	committed, rolledBack, err := c.counts()
	if err != nil {
		fmt.Fprintf(c.out, "consumer: -- count: %v\n", err)
		return
	}
	fmt.Fprintf(c.out, "consumer: -- committed %d, delivered %d, lag %d, duplicates %d, rolled back %d\n",
		committed, c.t.unique(), committed-c.t.unique(), c.t.duplicates, rolledBack)
}

func (c *consumer) counts() (committed, rolledBack int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.db.QueryRow(ctx, countCommittedSQL).Scan(&committed); err != nil {
		return 0, 0, fmt.Errorf("count committed events: %w", err)
	}
	if err := c.db.QueryRow(ctx, countRolledBackSQL).Scan(&rolledBack); err != nil {
		return 0, 0, fmt.Errorf("count rolled-back events: %w", err)
	}
	return committed, rolledBack, nil
}

// drainAndSummarize keeps consuming until as many distinct events have
// arrived as the outbox holds, or drainTimeout passes, then compares the
// deliveries with the database and prints the summary.
func (c *consumer) drainAndSummarize(deliveries <-chan amqp.Delivery) error {
	fmt.Fprintf(c.out, "consumer: stopping: waiting up to %s for the relay to deliver every committed event\n", drainTimeout)
	deadline := time.After(drainTimeout)
	check := time.NewTicker(200 * time.Millisecond)
	defer check.Stop()
drain:
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				break drain
			}
			c.handle(d)
		case <-check.C:
			committed, _, err := c.counts()
			if err != nil {
				return err
			}
			if c.t.unique() >= committed {
				break drain
			}
		case <-deadline:
			fmt.Fprintln(c.out, "consumer: gave up waiting")
			break drain
		}
	}
	c.status()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	committed, err := queryStrings(ctx, c.db, committedIDsSQL)
	if err != nil {
		return fmt.Errorf("read committed event ids: %w", err)
	}
	rolledBack, err := queryStrings(ctx, c.db, rolledBackIDsSQL)
	if err != nil {
		return fmt.Errorf("read rolled-back event ids: %w", err)
	}
	v := c.t.verdict(committed, rolledBack)
	v.print(c.out)
	if !v.ok() {
		return cli.ErrCheckFailed
	}
	return nil
}

func queryStrings(ctx context.Context, db *pgx.Conn, sql string) ([]string, error) {
	rows, err := db.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
