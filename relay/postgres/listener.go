package postgres

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/retry"
	"github.com/outboxrelay/outboxrelay/relay"
)

// Channel is the notification channel the optional outbox_notify trigger
// sends on.
const Channel = "outbox_relay"

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	// URL is the database to listen on, in Config.URL's syntax; pool_*
	// settings in it are understood, not sent to the server. Required.
	URL string
	// Logger receives a line when the listener loses its connection and
	// one when it listens again. Nil discards.
	Logger *slog.Logger
}

// Validate reports the first field that cannot work.
func (c ListenerConfig) Validate() error {
	if c.URL == "" {
		return &relay.ConfigError{Field: "URL", Problem: "is required"}
	}
	if _, err := pgxpool.ParseConfig(c.URL); err != nil {
		return &relay.ConfigError{Field: "URL", Problem: "cannot be parsed: " + redactParseError(err)}
	}
	return nil
}

// Listener holds a dedicated connection that LISTENs on Channel and turns
// notifications into wake-ups. Notifications are only hints: they are lost
// while the connection is down, so after every (re)connect the listener
// sends one wake-up to make the relay read what it may have missed.
type Listener struct {
	url  string
	log  *slog.Logger
	wake chan struct{}
}

// NewListener returns a Listener. It does not connect until Run.
func NewListener(cfg ListenerConfig) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{url: cfg.URL, log: log, wake: make(chan struct{}, 1)}, nil
}

// C delivers wake-ups. It holds at most one pending value, so a burst of
// notifications becomes one read.
func (l *Listener) C() <-chan struct{} { return l.wake }

// Run listens until ctx ends, reconnecting with capped, jittered backoff.
func (l *Listener) Run(ctx context.Context) {
	backoff := retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}
	var failing retry.Streak
	for ctx.Err() == nil {
		err := l.listen(ctx, func() {
			if failing.Succeed() > 0 {
				l.log.Info("listening for wake-ups again")
			}
			backoff.Reset()
		})
		if ctx.Err() != nil {
			return
		}
		if failing.Fail(err) {
			l.log.Warn("wake-up listener lost; polling continues", "err", err)
		}
		t := time.NewTimer(backoff.Next())
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

func (l *Listener) listen(ctx context.Context, connected func()) error {
	// Parsed as a pool URL, so pool_* settings in RELAY_DATABASE_URL are
	// understood rather than sent to the server as parameters.
	pc, err := pgxpool.ParseConfig(l.url)
	if err != nil {
		return errors.New(redactParseError(err))
	}
	cfg := pc.ConnConfig
	cfg.RuntimeParams["application_name"] = "outbox-relay listener"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{Channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	l.signal() // read whatever was committed while not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		l.signal()
	}
}

func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}
