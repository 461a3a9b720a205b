// Command quickstart is the newcomer's demo of the transactional outbox: a
// sample order service writes events with the outbox package, outbox-relay
// publishes them to RabbitMQ, and a consumer checks that every committed
// event arrives, that no rolled-back event does, and that each order's events
// arrive in order.
//
// scripts/demo.sh runs the whole thing; see README.md. The roles are
// subcommands, each its own process, because in real life they are separate
// programs that share nothing but the database and the broker:
//
//	quickstart setup      create the demo tables, exchange and queue (idempotent)
//	quickstart service    the sample order service; runs until SIGINT/SIGTERM
//	quickstart consumer   consume and check; on SIGINT/SIGTERM drain, print a summary
//	quickstart teardown   delete the demo's queue and, if unused, its exchange
//
// Every role reads RELAY_DATABASE_URL and RELAY_AMQP_URL, the variables that
// configure outbox-relay, unless -db and -amqp are given.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// errCheckFailed is returned by the consumer when events were lost, arrived
// out of order or should never have been published. It exits with code 1;
// other errors exit with code 2 so that the script can tell them apart.
var errCheckFailed = errors.New("check failed")

// config is what every role needs; each role uses the parts it talks to.
type config struct {
	DatabaseURL string // the service's database, holding the outbox table
	AMQPURL     string // the broker outbox-relay publishes to
	Exchange    string // topic exchange the events are published to
	Queue       string // the consumer's durable queue
}

const usage = `usage: quickstart setup|service|consumer|teardown [flags]

  setup      create the orders table, the exchange and the queue (idempotent)
  service    write order events through the outbox until SIGINT/SIGTERM
  consumer   consume and check events; on SIGINT/SIGTERM drain and summarize
  teardown   delete the queue and, if nothing else is bound to it, the exchange

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
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quickstart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var cfg config
	fs.StringVar(&cfg.DatabaseURL, "db", os.Getenv("RELAY_DATABASE_URL"), "PostgreSQL URL (default $RELAY_DATABASE_URL)")
	fs.StringVar(&cfg.AMQPURL, "amqp", os.Getenv("RELAY_AMQP_URL"), "RabbitMQ URL (default $RELAY_AMQP_URL)")
	fs.StringVar(&cfg.Exchange, "exchange", "demo.orders", "topic exchange the events are published to")
	fs.StringVar(&cfg.Queue, "queue", "demo.orders.quickstart", "durable queue the consumer reads")
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
	if cfg.DatabaseURL == "" && cmd != "teardown" {
		return errors.New("no database: set RELAY_DATABASE_URL or -db")
	}
	if cfg.AMQPURL == "" && cmd != "service" {
		return errors.New("no broker: set RELAY_AMQP_URL or -amqp")
	}
	switch cmd {
	case "setup":
		return setup(ctx, cfg, stdout)
	case "service":
		return runService(ctx, cfg, stdout)
	case "consumer":
		return runConsumer(ctx, cfg, stdout)
	case "teardown":
		return teardown(ctx, cfg, stdout)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}
