package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/examples/internal/broker"
)

// Inbox consumer names. The inbox deduplicates per name: never rename one.
const (
	inventoryConsumer = "inventory.order-events"
	ordersConsumer    = "orders.stock-replies"
)

// shop is the whole system in one process, to keep the demo one command.
// The parts share no memory: each service has its own database pool and
// broker connection, and they talk only through the relays and RabbitMQ.
type shop struct {
	cfg  config
	topo topology

	ordersDB, inventoryDB                *pgxpool.Pool
	ordersConn, inventoryConn, auditConn *amqp.Connection

	customers      *driver
	ordersInbox    *consumer // inventory's replies -> orders
	inventoryInbox *consumer // order events -> inventory
	inventory      *inventoryService
	audit          *auditLog
}

// open connects every part. Close undoes it.
func open(ctx context.Context, cfg config) (_ *shop, err error) {
	s := &shop{cfg: cfg, topo: newTopology(cfg.Prefix), audit: newAuditLog()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.ordersDB, err = pgxpool.New(ctx, cfg.OrdersDB); err != nil {
		return nil, fmt.Errorf("orders database: %w", err)
	}
	if s.inventoryDB, err = pgxpool.New(ctx, cfg.InventoryDB); err != nil {
		return nil, fmt.Errorf("inventory database: %w", err)
	}
	if s.ordersConn, err = broker.Dial(cfg.AMQPURL, "shop orders"); err != nil {
		return nil, err
	}
	if s.inventoryConn, err = broker.Dial(cfg.AMQPURL, "shop inventory"); err != nil {
		return nil, err
	}
	if s.auditConn, err = broker.Dial(cfg.AMQPURL, "shop audit"); err != nil {
		return nil, err
	}
	orders := &ordersService{db: s.ordersDB}
	s.inventory = &inventoryService{db: s.inventoryDB}
	s.customers = newDriver(orders, cfg.Rate)
	if s.ordersInbox, err = newConsumer(s.ordersDB, ordersConsumer, s.topo.RepliesQueue, typed(orders.HandleStockReply), cfg.Log); err != nil {
		return nil, err
	}
	if s.inventoryInbox, err = newConsumer(s.inventoryDB, inventoryConsumer, s.topo.InventoryQueue, typed(s.inventory.HandleOrderEvent), cfg.Log); err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the connections and pools.
func (s *shop) Close() {
	for _, c := range []*amqp.Connection{s.ordersConn, s.inventoryConn, s.auditConn} {
		if c != nil {
			c.Close()
		}
	}
	for _, p := range []*pgxpool.Pool{s.ordersDB, s.inventoryDB} {
		if p != nil {
			p.Close()
		}
	}
}

// Run runs the customers, both services and the audit until ctx ends. Then
// the customers stop, the services go on until the saga of every placed
// order has finished and every event has arrived (at most cfg.Settle), and
// Run checks that everything agrees. It returns an error only when a part
// failed; a disagreement is in the summary.
func (s *shop) Run(ctx context.Context) (summary, error) {
	// The consumers outlive ctx: they must take in the replies to the
	// last orders after the customers stop.
	consumeCtx, stopConsuming := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsuming()
	runCtx, stopRunning := context.WithCancel(ctx)
	defer stopRunning()

	// The first part to fail stops the customers and the wait for settling.
	var mu sync.Mutex
	var errs []error
	failed := make(chan struct{})
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if errs = append(errs, err); len(errs) == 1 {
			close(failed)
			stopRunning()
		}
	}
	var wg sync.WaitGroup
	spawn := func(f func() error) {
		wg.Go(func() {
			if err := f(); err != nil {
				fail(err)
			}
		})
	}
	spawn(func() error { return s.inventoryInbox.run(consumeCtx, s.inventoryConn) })
	spawn(func() error { return s.ordersInbox.run(consumeCtx, s.ordersConn) })
	spawn(func() error { return s.audit.run(consumeCtx, s.auditConn, s.topo.AuditQueue) })
	spawn(func() error { return s.inventory.restock(runCtx) })
	spawn(func() error { s.progress(runCtx); return nil })
	// The customers run here, not in a goroutine: settling must not begin
	// before their last command has committed.
	if err := s.customers.run(runCtx); err != nil {
		fail(err)
	}
	stopRunning()
	fmt.Fprintf(s.cfg.Out, "shop    : customers stopped; waiting up to %s for the last replies and events\n", s.cfg.Settle)
	settled := s.settle(context.WithoutCancel(ctx), failed)
	stopConsuming()
	wg.Wait()
	if len(errs) > 0 {
		return summary{}, errors.Join(errs...)
	}
	sum, err := s.Check(context.WithoutCancel(ctx))
	if err != nil {
		return summary{}, err
	}
	sum.Settled = settled
	return sum, nil
}

// settle waits until every placed order got its reply and every event
// committed to either outbox has been processed by its consumers, or until
// cfg.Settle has passed or a part failed. It reports whether all was done.
func (s *shop) settle(ctx context.Context, failed <-chan struct{}) bool {
	deadline := time.After(s.cfg.Settle)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := s.counts(ctx)
		if err == nil && c.done() {
			return true
		}
		select {
		case <-failed:
			return false
		case <-deadline:
			if err != nil {
				fmt.Fprintf(s.cfg.Out, "shop    : gave up waiting: %v\n", err)
			} else {
				fmt.Fprintf(s.cfg.Out, "shop    : gave up waiting: %s\n", c)
			}
			return false
		case <-tick.C:
		}
	}
}

// counts is the progress of the whole system, from the databases.
type counts struct {
	orders, open, placed, confirmed, cancelled int
	orderEvents, replies                       int // rows committed to the outboxes
	inventoryDone, ordersDone                  int // rows in the inboxes
	auditDone                                  int // distinct messages the audit received
}

func (s *shop) counts(ctx context.Context) (counts, error) {
	var c counts
	err := s.ordersDB.QueryRow(ctx, `
SELECT count(*), count(*) FILTER (WHERE status = 'open'), count(*) FILTER (WHERE status = 'placed'),
       count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status = 'cancelled'),
       (SELECT count(*) FROM outbox), (SELECT count(*) FROM inbox WHERE consumer = $1)
FROM orders`, ordersConsumer).Scan(&c.orders, &c.open, &c.placed, &c.confirmed, &c.cancelled, &c.orderEvents, &c.ordersDone)
	if err != nil {
		return c, fmt.Errorf("count in the orders database: %w", err)
	}
	err = s.inventoryDB.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM inbox WHERE consumer = $1)`,
		inventoryConsumer).Scan(&c.replies, &c.inventoryDone)
	if err != nil {
		return c, fmt.Errorf("count in the inventory database: %w", err)
	}
	c.auditDone = s.audit.distinct()
	return c, nil
}

// done reports whether nothing is under way: no order waits for its reply,
// and every consumer has processed every event of the outbox it reads.
func (c counts) done() bool {
	return c.placed == 0 && c.inventoryDone == c.orderEvents && c.auditDone == c.orderEvents && c.ordersDone == c.replies
}

func (c counts) String() string {
	return fmt.Sprintf("%d orders awaiting a reply; order events committed %d, processed by inventory %d, received by the audit %d; replies committed %d, processed by orders %d",
		c.placed, c.orderEvents, c.inventoryDone, c.auditDone, c.replies, c.ordersDone)
}

// progress prints a line every few seconds until ctx ends.
func (s *shop) progress(ctx context.Context) {
	start := time.Now()
	_ = every(ctx, 5*time.Second, func() error { // never fails: a failed count is printed
		c, err := s.counts(ctx)
		if err != nil {
			if ctx.Err() == nil {
				fmt.Fprintf(s.cfg.Out, "shop    : %v\n", err)
			}
			return nil
		}
		fmt.Fprintf(s.cfg.Out, "shop    : %3.0fs  orders %d (%d open, %d placed, %d confirmed, %d cancelled)  commands %d, %d rolled back  events %d  duplicates absorbed %d\n",
			time.Since(start).Seconds(), c.orders, c.open, c.placed, c.confirmed, c.cancelled,
			s.customers.committed.Load(), s.customers.rolledBack.Load(), c.orderEvents+c.replies,
			s.inventoryInbox.duplicates.Load()+s.ordersInbox.duplicates.Load())
		return nil
	})
}

// every calls fn every interval, the first time one interval after it
// starts, until ctx ends (it returns nil) or fn fails (it returns fn's
// error).
func every(ctx context.Context, interval time.Duration, fn func() error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := fn(); err != nil {
			return err
		}
	}
}
