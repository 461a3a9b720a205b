package postgres

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Channel is the notification channel the optional outbox_notify trigger
// sends on.
const Channel = "outbox_relay"

// Listener holds a dedicated connection that LISTENs on Channel and turns
// notifications into wake-ups. Notifications are only hints: they are lost
// while the connection is down, so after every (re)connect the listener
// sends one wake-up to make the relay read what it may have missed.
type Listener struct {
	url  string
	log  *slog.Logger
	wake chan struct{}
}

// NewListener returns a Listener for the database at url.
func NewListener(url string, log *slog.Logger) *Listener {
	return &Listener{url: url, log: log, wake: make(chan struct{}, 1)}
}

// C delivers wake-ups. It holds at most one pending value, so a burst of
// notifications becomes one read.
func (l *Listener) C() <-chan struct{} { return l.wake }

// Run listens until ctx ends, reconnecting with capped, jittered backoff.
func (l *Listener) Run(ctx context.Context) {
	const minWait, maxWait = 100 * time.Millisecond, 10 * time.Second
	wait := minWait
	failing := false
	for ctx.Err() == nil {
		err := l.listen(ctx, func() {
			if failing {
				l.log.Info("listening for wake-ups again")
				failing = false
			}
			wait = minWait
		})
		if ctx.Err() != nil {
			return
		}
		if !failing {
			l.log.Warn("wake-up listener lost; polling continues", "err", err)
			failing = true
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		wait = min(wait*2, maxWait)
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
