// Package replay publishes outbox rows again that the relay already
// published, to recover a consumer that lost messages: in their original
// order, with their original message id, properties and headers, plus the
// header outbox_replay = true.
//
// Replay is the engine only. It takes the rows page by page from a reader
// (relay/postgres's Admin.ReplayRows, which knows what was published), maps
// each to its message as the relay does, and publishes a page at a time,
// waiting for the broker's confirms before it reads the next. A row that
// cannot become a message is skipped and named, and the rest goes out in
// order. Replay takes no lease: replayed messages may interleave with the
// relay's live ones, so consumers must deduplicate on message id.
package replay

import (
	"context"
	"fmt"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Header marks a replayed message, next to the headers every message
// carries (aggregate_type, aggregate_id, outbox_id).
const Header = "outbox_replay"

// DefaultConfirmTimeout is Config.ConfirmTimeout when left zero.
const DefaultConfirmTimeout = time.Minute

// Publisher sends messages with publisher confirms, as relay.Publisher
// does; a *rabbitmq.Broker is one.
type Publisher interface {
	Publish(ctx context.Context, msgs []relay.Message) relay.Confirmation
}

// Rows reads the next page of rows to replay: up to limit rows after the
// cursor, in publishing order, and none once the selection is exhausted.
type Rows func(ctx context.Context, after relay.Position, limit int) ([]relay.Row, error)

// Config configures a replay.
type Config struct {
	// Rows reads the rows to replay. Required.
	Rows Rows
	// Publisher sends the messages. Nil makes a dry run: nothing is sent,
	// each message goes to OnDryRun instead, and Result.Sent counts them.
	Publisher Publisher
	// BatchSize is the most rows read, and messages awaiting confirms, at
	// a time. Zero means relay.DefaultBatchSize.
	BatchSize int
	// Exchange is the exchange of rows whose exchange is NULL, as the
	// relay's Config.Exchange.
	Exchange string
	// ToQueue, if set, sends every message to this queue (the default
	// exchange, routing key ToQueue) instead of its own exchange and
	// routing key.
	ToQueue string
	// ConfirmTimeout bounds the wait for one page's confirms. Zero means
	// DefaultConfirmTimeout.
	ConfirmTimeout time.Duration
	// OnSkip, if set, is told of each row that cannot become a message
	// (relay.NewMessage's error), when it is skipped.
	OnSkip func(row *relay.Row, err error)
	// OnDryRun, if set, is told in a dry run of each message that would be
	// sent, in publishing order.
	OnDryRun func(row *relay.Row, m relay.Message)
}

// Validate reports the first field that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Rows == nil:
		return &relay.ConfigError{Field: "Rows", Problem: "is required"}
	case c.BatchSize < 0:
		return &relay.ConfigError{Field: "BatchSize", Problem: "must not be negative"}
	case c.ConfirmTimeout < 0:
		return &relay.ConfigError{Field: "ConfirmTimeout", Problem: "must not be negative"}
	}
	return nil
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.BatchSize == 0 {
		c.BatchSize = relay.DefaultBatchSize
	}
	if c.ConfirmTimeout == 0 {
		c.ConfirmTimeout = DefaultConfirmTimeout
	}
	return c
}

// Result is what a replay did.
type Result struct {
	// Sent counts the rows sent and confirmed, or in a dry run the
	// messages that would be sent.
	Sent int
	// Skipped are the ids of the rows that cannot become messages, in
	// publishing order.
	Skipped []int64
}

// Run replays the rows of cfg.Rows, page by page: each page is mapped to
// messages and published (or, in a dry run, handed to OnDryRun), and its
// confirms awaited before the next page is read. It stops at the first
// message the broker does not confirm, with an error naming its row; the
// Result, also then, tells what was done.
func Run(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	cfg = cfg.WithDefaults()
	var after relay.Position
	for {
		rows, err := cfg.Rows(ctx, after, cfg.BatchSize)
		if err != nil {
			return res, fmt.Errorf("read rows to replay: %w", err)
		}
		if len(rows) == 0 {
			return res, nil
		}
		after = rows[len(rows)-1].Position()
		msgs, sending := messages(cfg, rows, &res)
		if cfg.Publisher == nil {
			for i, m := range msgs {
				if cfg.OnDryRun != nil {
					cfg.OnDryRun(sending[i], m)
				}
			}
			res.Sent += len(msgs)
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		if err := publish(ctx, cfg, msgs, sending, &res); err != nil {
			return res, err
		}
	}
}

// messages maps a page of rows to their messages, and returns the row of
// each. A row that cannot become one is the row's own fault, which no
// retry cures: it is skipped and named, and the rest still goes out.
func messages(cfg Config, rows []relay.Row, res *Result) ([]relay.Message, []*relay.Row) {
	msgs := make([]relay.Message, 0, len(rows))
	sending := make([]*relay.Row, 0, len(rows))
	for i := range rows {
		row := &rows[i]
		m, err := relay.NewMessage(row, cfg.Exchange)
		if err != nil {
			res.Skipped = append(res.Skipped, row.ID)
			if cfg.OnSkip != nil {
				cfg.OnSkip(row, err)
			}
			continue
		}
		m.Headers[Header] = true
		if cfg.ToQueue != "" {
			m.Exchange, m.RoutingKey = "", cfg.ToQueue
		}
		msgs, sending = append(msgs, m), append(sending, row)
	}
	return msgs, sending
}

// publish sends one page and waits for its confirms.
func publish(ctx context.Context, cfg Config, msgs []relay.Message, sending []*relay.Row, res *Result) error {
	wctx, cancel := context.WithTimeout(ctx, cfg.ConfirmTimeout)
	defer cancel()
	answers, err := cfg.Publisher.Publish(wctx, msgs).Wait(wctx)
	n, refused := relay.Leading(answers)
	res.Sent += n
	if err == nil {
		err = refused
	}
	if n < len(msgs) {
		return fmt.Errorf("replay stopped after %d rows, at row %d (rerun it to send the rest; consumers deduplicate): %w",
			res.Sent, sending[n].ID, err)
	}
	return nil
}
