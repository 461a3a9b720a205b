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
	"io"
	"os"

	"github.com/outboxrelay/outboxrelay/examples/internal/cli"
)

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

func main() { cli.Main("quickstart", run) }

// run parses the command line and runs the role it names. The consumer's
// error matches cli.ErrCheckFailed when events were lost, arrived out of
// order or should never have been published.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("quickstart", usage, stderr)
	var cfg config
	fs.StringVar(&cfg.DatabaseURL, "db", os.Getenv("RELAY_DATABASE_URL"), "PostgreSQL URL (default $RELAY_DATABASE_URL)")
	fs.StringVar(&cfg.AMQPURL, "amqp", os.Getenv("RELAY_AMQP_URL"), "RabbitMQ URL (default $RELAY_AMQP_URL)")
	fs.StringVar(&cfg.Exchange, "exchange", "demo.orders", "topic exchange the events are published to")
	fs.StringVar(&cfg.Queue, "queue", "demo.orders.quickstart", "durable queue the consumer reads")
	cmd, err := cli.Command(fs, args)
	if cmd == "" {
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
		return cli.Unknown(fs, cmd)
	}
}
