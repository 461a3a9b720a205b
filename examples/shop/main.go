// Command shop is the worked example of the transactional outbox and the
// inbox: two services, each with a database of its own, that must agree.
//
// The orders service changes its tables and writes events to its outbox in
// one transaction per command. The inventory service consumes those events
// through its inbox (exactly-once effects), keeps a read model of orders,
// and answers each placed order by reserving stock and writing StockReserved
// or StockShort to its own outbox, in the same transaction. The orders
// service consumes the replies through its inbox and confirms the order, or
// cancels it when stock was short. Two outbox-relay processes, one per
// database, publish the two outboxes. At the end an audit rebuilds every
// order from its published events alone and checks that all views agree.
//
// scripts/demo.sh runs it all (`make demo`); see README.md.
//
//	shop setup      create the services' tables and stock, and the broker objects
//	shop run        run customers, services and audit until SIGINT/SIGTERM,
//	                then let the saga finish, check and print the summary
//	shop teardown   delete the broker objects
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/outboxrelay/outboxrelay/examples/internal/broker"
	"github.com/outboxrelay/outboxrelay/examples/internal/cli"
)

const usage = `usage: shop setup|run|teardown [flags]

  setup      create the services' tables and stock, and the broker objects (idempotent)
  run        run customers, both services and the audit until SIGINT/SIGTERM;
             then let the saga finish, check that everything agrees, print a summary
  teardown   delete the broker objects

flags:
`

// config is what the shop needs; main fills it from flags, the test
// directly.
type config struct {
	OrdersDB    string        // the orders service's database
	InventoryDB string        // the inventory service's database
	AMQPURL     string        // the broker both relays publish to
	Prefix      string        // of every broker name (see topology)
	Rate        int           // commands per second from the customers
	Settle      time.Duration // longest wait, after the customers stop, for the saga to finish
	Out         io.Writer     // what each command did: progress and the summary for run
	Log         *slog.Logger  // what the inboxes report
}

func main() { cli.Main("shop", run) }

// run parses the command line and runs the command it names. It returns an
// error matching cli.ErrCheckFailed when the system ran and its views
// disagree.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("shop", usage, stderr)
	cfg := config{Out: stdout, Log: slog.New(slog.NewTextHandler(stderr, nil))}
	fs.StringVar(&cfg.OrdersDB, "orders-db", "", "the orders service's PostgreSQL URL")
	fs.StringVar(&cfg.InventoryDB, "inventory-db", "", "the inventory service's PostgreSQL URL")
	fs.StringVar(&cfg.AMQPURL, "amqp", "", "RabbitMQ URL")
	fs.StringVar(&cfg.Prefix, "prefix", "shop", "prefix of the exchange and queue names")
	fs.IntVar(&cfg.Rate, "rate", 50, "commands per second from the customers")
	fs.DurationVar(&cfg.Settle, "settle", time.Minute, "longest wait after the customers stop")
	cmd, err := cli.Command(fs, args)
	if cmd == "" {
		return err
	}
	if cfg.AMQPURL == "" || (cmd != "teardown" && (cfg.OrdersDB == "" || cfg.InventoryDB == "")) {
		return errors.New("set -amqp, and -orders-db and -inventory-db")
	}
	if cfg.Rate < 1 || cfg.Rate > 1000 {
		return fmt.Errorf("-rate %d: want 1 to 1000", cfg.Rate)
	}
	switch cmd {
	case "setup":
		return setup(ctx, cfg)
	case "run":
		return runShop(ctx, cfg)
	case "teardown":
		return teardown(cfg)
	default:
		return cli.Unknown(fs, cmd)
	}
}

// setup creates the tables, the opening stock and the broker objects.
func setup(ctx context.Context, cfg config) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := createTables(ctx, cfg.OrdersDB, ordersSchema); err != nil {
		return fmt.Errorf("orders database: %w", err)
	}
	if err := createTables(ctx, cfg.InventoryDB, inventorySchema); err != nil {
		return fmt.Errorf("inventory database: %w", err)
	}
	ch, closeBroker, err := broker.Channel(cfg.AMQPURL, "shop setup")
	if err != nil {
		return err
	}
	defer closeBroker()
	t := newTopology(cfg.Prefix)
	if err := t.declare(ch); err != nil {
		return err
	}
	fmt.Fprintf(cfg.Out, "setup   : tables orders, order_items | stock, reservations, order_view; exchanges %s, %s; queues with dead-letter exchange %s\n",
		t.OrdersExchange, t.InventoryExchange, t.DeadLetters)
	return nil
}

// runShop runs the shop until ctx ends and prints the summary.
func runShop(ctx context.Context, cfg config) error {
	s, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(cfg.Out, "shop    : customers send %d commands/s; inventory restocks %d units of a product every %s when fewer than %d are free\n",
		cfg.Rate, restockUnits, restockEvery, restockBelow)
	sum, err := s.Run(ctx)
	if err != nil {
		return err
	}
	sum.print(cfg.Out)
	if !sum.OK() {
		return cli.ErrCheckFailed
	}
	return nil
}

// teardown deletes the broker objects; the databases are the caller's.
func teardown(cfg config) error {
	ch, closeBroker, err := broker.Channel(cfg.AMQPURL, "shop teardown")
	if err != nil {
		return err
	}
	defer closeBroker()
	if err := newTopology(cfg.Prefix).delete(ch); err != nil {
		return err
	}
	fmt.Fprintf(cfg.Out, "teardown: deleted the %s.* queues and exchanges\n", cfg.Prefix)
	return nil
}
