package testenv

import (
	"context"
	"errors"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

func TestDatabase(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	adminURL := requireEnv(t, envDatabaseURL)

	var dbName string
	t.Run("CreatesDatabaseWithSchema", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, Database(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var outbox *string
		if err := conn.QueryRow(ctx, "SELECT current_database(), to_regclass('outbox')::text").Scan(&dbName, &outbox); err != nil {
			t.Fatal(err)
		}
		if outbox == nil {
			t.Error("table outbox missing")
		}
	})
	t.Run("DropsDatabaseAtCleanup", func(t *testing.T) {
		if databaseExists(t, adminURL, dbName) {
			t.Errorf("database %s still exists after cleanup", dbName)
		}
	})

	t.Run("EmptyDatabaseHasNoSchema", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, EmptyDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var outbox *string
		if err := conn.QueryRow(ctx, "SELECT to_regclass('outbox')::text").Scan(&outbox); err != nil {
			t.Fatal(err)
		}
		if outbox != nil {
			t.Error("table outbox exists in an empty database")
		}
	})
}

func databaseExists(t *testing.T, adminURL, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var exists bool
	err = conn.QueryRow(t.Context(), "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	return exists
}

func TestBroker(t *testing.T) {
	t.Parallel()
	api := newMgmtAPI(t, requireEnv(t, envRabbitAPI))

	var vhost string
	t.Run("CreatesVhost", func(t *testing.T) {
		b := NewBroker(t)
		vhost = b.Vhost
		if err := api.do(t, "GET", "/api/vhosts/"+url.PathEscape(b.Vhost), nil, nil); err != nil {
			t.Fatalf("vhost missing: %v", err)
		}

		q := b.DeclareQueue(t, "amq.direct", "key")
		conn := b.Dial(t)
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Publish("amq.direct", "key", true, false, amqp.Publishing{Body: []byte("hi")}); err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclarePassive(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
			t.Fatal(err)
		}
		if got := b.DeclareQueue(t, "", "named"); got != "named" {
			t.Errorf("DeclareQueue on default exchange returned %q, want %q", got, "named")
		}

		// Connections lists a connection by the name its client gave.
		dialed := time.Now()
		named, err := amqp.DialConfig(b.URL, amqp.Config{Properties: amqp.Table{"connection_name": "testenv-named"}})
		if err != nil {
			t.Fatal(err)
		}
		var listed []Connection
		waitFor(t, 20*time.Second, func() bool { listed = b.Connections(t, "testenv-named"); return len(listed) > 0 })
		if c := listed[0]; len(listed) != 1 || c.ClientName != "testenv-named" ||
			c.ConnectedAt.Before(dialed.Add(-time.Minute)) || c.ConnectedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("Connections(testenv-named) = %+v, want the one connection, opened about %s", listed, dialed.Format(time.TimeOnly))
		}
		if err := named.Close(); err != nil {
			t.Fatal(err)
		}

		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		waitFor(t, 20*time.Second, func() bool { return b.CloseConnections(t, "") > 0 })
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("connection still open after CloseConnections")
		}
	})
	t.Run("DeletesVhostAtCleanup", func(t *testing.T) {
		err := api.do(t, "GET", "/api/vhosts/"+url.PathEscape(vhost), nil, nil)
		if !errors.Is(err, errNotFound) {
			t.Errorf("vhost %s after cleanup: got %v, want not found", vhost, err)
		}
	})
}

// waitFor polls cond until it holds. The management API offers no change
// notification, so polling is the only way to see a connection appear there.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met within %v", timeout)
		case <-tick.C:
		}
	}
}

func TestMissingEnvFails(t *testing.T) {
	// requireEnv must fail, never skip; run it on a fake TB to observe that.
	const name = "RELAY_TEST_SURELY_UNSET"
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		requireEnv(ft, name)
	}()
	<-done
	if !ft.fataled || ft.skipped {
		t.Errorf("requireEnv with %s unset: fataled=%v skipped=%v, want a failure", name, ft.fataled, ft.skipped)
	}
}

// fatalRecorder records Fatalf and Skip instead of acting on them.
type fatalRecorder struct {
	testing.TB
	fataled, skipped bool
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(string, ...any) {
	f.fataled = true
	runtime.Goexit()
}
func (f *fatalRecorder) Skip(...any) {
	f.skipped = true
	runtime.Goexit()
}

func TestOpenTransactionElsewhere(t *testing.T) {
	ctx := context.Background()
	tx := OpenTransactionElsewhere(t)
	var txid uint64
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned()`).Scan(&txid); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var xmin uint64
	if err := conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())`).Scan(&xmin); err != nil {
		t.Fatal(err)
	}
	if xmin > txid {
		t.Errorf("another database's snapshot xmin is %d, past the open transaction %d", xmin, txid)
	}
}
