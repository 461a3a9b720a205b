package postgres

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestListenerWakesAfterBackendTerminated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := b.pool.Exec(ctx, `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()`); err != nil {
		t.Fatal(err)
	}
	l, err := NewListener(ListenerConfig{URL: b.url, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { l.Run(ctx) })

	wait := func(what string) {
		t.Helper()
		select {
		case <-l.C():
		case <-time.After(10 * time.Second):
			t.Fatalf("no wake-up after %s", what)
		}
	}
	wait("connecting") // the wake-up sent after every (re)connect
	if _, err := b.pool.Exec(ctx, insertSQL, "1", "1"); err != nil {
		t.Fatal(err)
	}
	wait("an insert")

	var killed int
	if err := b.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'outbox-relay listener'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listener backends (%v), want 1", killed, err)
	}
	wait("reconnecting")
	if _, err := b.pool.Exec(ctx, insertSQL, "2", "2"); err != nil {
		t.Fatal(err)
	}
	wait("an insert after reconnecting")
}

func TestListenerConfigValidate(t *testing.T) {
	t.Parallel()
	if _, err := NewListener(ListenerConfig{}); err == nil {
		t.Error("NewListener without a URL: no error")
	}
	if _, err := NewListener(ListenerConfig{URL: "postgres://u:pw@db:99999/x"}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("NewListener with a bad port = %v, want an error without the password", err)
	}
}
