package testenv

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPostgresServer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	var dir string
	var pid int
	t.Run("CommittedDataSurvivesImmediateRestart", func(t *testing.T) {
		start := time.Now()
		s := NewPostgresServer(t)
		t.Logf("started in %v", time.Since(start).Round(time.Millisecond))
		dir = s.dir
		pid = postmasterPID(t, s)

		dbURL := s.Database(t)
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var id int64
		err = conn.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
			VALUES ('order', '1', 'OrderPlaced', 'orders', '{}') RETURNING id`).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}

		start = time.Now()
		s.Restart(t)
		t.Logf("restarted in %v", time.Since(start).Round(time.Millisecond))

		if err := conn.Ping(ctx); err == nil {
			t.Error("connection opened before the restart still works")
		}
		conn2, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatalf("connect after restart: %v", err)
		}
		defer conn2.Close(ctx)
		var n int
		if err := conn2.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("row %d missing after restart", id)
		}
		if newPID := postmasterPID(t, s); newPID == pid {
			t.Errorf("postmaster pid %d unchanged by restart", pid)
		} else {
			pid = newPID
		}
	})
	t.Run("StopsAndRemovesServerAtCleanup", func(t *testing.T) {
		if dir == "" {
			t.Skip("server did not start")
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory %s still exists after cleanup (err %v)", dir, err)
		}
		if !processExited(pid) {
			t.Errorf("postmaster %d still running after cleanup", pid)
		}
	})
}

func postmasterPID(t *testing.T, s *PostgresServer) int {
	t.Helper()
	pid := s.postmasterPID()
	if pid == 0 {
		t.Fatal("no pid in postmaster.pid")
	}
	return pid
}
