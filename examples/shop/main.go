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
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// errCheckFailed makes run exit with status 1: the system ran, and the
// views disagree. Other errors exit with 2.
var errCheckFailed = errors.New("the consistency check failed")

const usage = `usage: shop setup|run|teardown [flags]

  setup      create the services' tables and stock, and the broker objects (idempotent)
  run        run customers, both services and the audit until SIGINT/SIGTERM;
             then let the saga finish, check that everything agrees, print a summary
  teardown   delete the broker objects

flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errCheckFailed):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "shop:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("shop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	cfg := config{Out: stdout, Log: slog.New(slog.NewTextHandler(stderr, nil))}
	fs.StringVar(&cfg.OrdersDB, "orders-db", "", "the orders service's PostgreSQL URL")
	fs.StringVar(&cfg.InventoryDB, "inventory-db", "", "the inventory service's PostgreSQL URL")
	fs.StringVar(&cfg.AMQPURL, "amqp", "", "RabbitMQ URL")
	fs.StringVar(&cfg.Prefix, "prefix", "shop", "prefix of the exchange and queue names")
	fs.IntVar(&cfg.Rate, "rate", 50, "commands per second from the customers")
	fs.DurationVar(&cfg.Settle, "settle", time.Minute, "longest wait after the customers stop")
	if len(args) == 0 {
		fs.Usage()
		return errors.New("missing command")
	}
	cmd := args[0]
	switch cmd {
	case "-h", "-help", "--help", "help":
		fs.Usage()
		return nil
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
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
		return setup(ctx, cfg, stdout)
	case "run":
		return runShop(ctx, cfg, stdout)
	case "teardown":
		return teardown(cfg, stdout)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// setup creates the tables, the opening stock and the broker objects.
func setup(ctx context.Context, cfg config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := createTables(ctx, cfg.OrdersDB, ordersSchema); err != nil {
		return fmt.Errorf("orders database: %w", err)
	}
	if err := createTables(ctx, cfg.InventoryDB, inventorySchema); err != nil {
		return fmt.Errorf("inventory database: %w", err)
	}
	conn, err := dial(cfg.AMQPURL, "shop setup")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	t := newTopology(cfg.Prefix)
	if err := t.declare(ch); err != nil {
		return err
	}
	fmt.Fprintf(out, "setup   : tables orders, order_items | stock, reservations, order_view; exchanges %s, %s; queues with dead-letter exchange %s\n",
		t.OrdersExchange, t.InventoryExchange, t.DeadLetters)
	return nil
}

// runShop runs the shop until ctx ends and prints the summary.
func runShop(ctx context.Context, cfg config, out io.Writer) error {
	s, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(out, "shop    : customers send %d commands/s; inventory restocks %d units of a product every %s when fewer than %d are free\n",
		cfg.Rate, restockUnits, restockEvery, restockBelow)
	sum, err := s.Run(ctx)
	if err != nil {
		return err
	}
	sum.print(out)
	if !sum.OK() {
		return errCheckFailed
	}
	return nil
}

// teardown deletes the broker objects; the databases are the caller's.
func teardown(cfg config, out io.Writer) error {
	conn, err := dial(cfg.AMQPURL, "shop teardown")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	t := newTopology(cfg.Prefix)
	if err := t.delete(ch); err != nil {
		return err
	}
	fmt.Fprintf(out, "teardown: deleted the %s.* queues and exchanges\n", cfg.Prefix)
	return nil
}
