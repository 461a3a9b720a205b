package relay_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
)

// logBuffer collects a relay's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRelayReportsRowsWrittenWithoutTheirLock: rows whose transaction did
// not take their aggregate's ordering lock are counted, exactly, and
// named in the log unless LockCheck is count; locked rows are not.
func TestRelayReportsRowsWrittenWithoutTheirLock(t *testing.T) {
	t.Parallel()
	for _, check := range []relay.LockCheck{relay.LockCheckWarn, relay.LockCheckCount} {
		t.Run(string(check), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			b.write(t, "u", 30, 3) // no lock
			tx, err := b.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, `SELECT outbox_lock('agg', 'l0', 'agg', 'l1')`); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
SELECT 'agg', 'l' || (g % 2), 'Tested', 'events', convert_to(json_build_object('agg', 'l' || (g % 2), 'seq', g / 2)::text, 'UTF8')
  FROM generate_series(0, 19) g`); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}

			obs := &counting{}
			var log logBuffer
			stop := run(t, relay.Config{Observer: obs, LockCheck: check, Logger: slog.New(slog.NewTextHandler(&log, nil))},
				b.store, b.broker)
			seen := b.delivered(t, 50)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if n := duplicates(b.rest(t, seen)); n != 0 {
				t.Fatalf("%d duplicates", n)
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			if obs.unlocked != 30 {
				t.Errorf("told of %d unlocked rows, want the 30 written without a lock", obs.unlocked)
			}
			logged := strings.Count(log.String(), "did not take their aggregate's ordering lock")
			switch {
			case check == relay.LockCheckWarn && (logged == 0 || !strings.Contains(log.String(), "agg/u0")):
				t.Errorf("no warning naming agg/u0:\n%s", log.String())
			case check == relay.LockCheckCount && logged != 0:
				t.Errorf("LockCheck count logged %d warnings:\n%s", logged, log.String())
			case strings.Contains(log.String(), "agg/l0"):
				t.Errorf("a locked aggregate was named:\n%s", log.String())
			}
		})
	}
}
