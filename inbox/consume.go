package inbox

import (
	"context"
	"errors"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/retry"
)

// ErrDeliveriesClosed is returned by [Inbox.Consume] when its deliveries
// channel closes, which amqp091-go does when the AMQP channel or connection
// closes. Open a new channel, consume again and call Consume with it: the
// broker redelivers whatever was not acked.
var ErrDeliveriesClosed = errors.New("inbox: deliveries channel closed")

// Bounds of the wait after a delivery failed for the database's sake, so
// that an outage does not turn into a loop of requeued redeliveries.
const (
	databaseRetryMin = 100 * time.Millisecond
	databaseRetryMax = 10 * time.Second
)

// Consume handles deliveries one at a time with [Inbox.Handle] until ctx
// ends (it returns nil) or deliveries closes ([ErrDeliveriesClosed]).
// Deliveries come from amqp091-go's Channel.Consume (or ConsumeWithContext)
// with autoAck false; set the channel's Qos prefetch so that the broker
// does not push the whole queue into memory.
//
// Errors of single deliveries do not stop it: it logs them to
// [Config.Logger] (a rejected message at level Error, a requeued one at
// Warn). While the database fails it waits between deliveries, with capped
// and jittered backoff from 100 ms to 10 s, and logs once when the failures
// start and once when they end.
//
// For concurrency, run Consume in several goroutines on one deliveries
// channel, with a prefetch at least that large; messages of one aggregate
// may then be processed out of order.
func (in *Inbox) Consume(ctx context.Context, deliveries <-chan amqp.Delivery) error {
	log := in.cfg.Logger.With("consumer", in.cfg.Consumer)
	backoff := retry.Backoff{Min: databaseRetryMin, Max: databaseRetryMax}
	var failing retry.Streak // of database failures
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case d, ok = <-deliveries:
			if !ok {
				return ErrDeliveriesClosed
			}
		}
		err := in.Handle(ctx, d)
		switch {
		case err == nil:
			if n := failing.Succeed(); n > 0 {
				log.Info("inbox: database recovered", "failed_deliveries", n)
				backoff.Reset()
			}
		case errors.Is(err, ErrRejected):
			// Logged even when stopping: the message has left the queue.
			log.Error("inbox: message rejected without requeue", "message_id", d.MessageId, "routing_key", d.RoutingKey, "err", err)
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrDatabase):
			if failing.Fail(err) {
				log.Warn("inbox: database failed; requeueing and retrying", "message_id", d.MessageId, "err", err)
			}
			sleep(ctx, backoff.Next())
		default:
			log.Warn("inbox: message not processed", "message_id", d.MessageId, "routing_key", d.RoutingKey, "err", err)
		}
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
