package testenv

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// NewStandby copies the server with pg_basebackup into a streaming standby
// of its own (a temporary directory, a free port), starts it and waits until
// it streams. With sync set, the primary then waits for the standby to
// flush every commit (synchronous_standby_names), so a commit that returned
// is on the standby: a promotion loses none. The standby is stopped and
// removed when the test ends; Promote makes it a primary.
func (s *PostgresServer) NewStandby(t testing.TB, sync bool) *PostgresServer {
	t.Helper()
	st := &PostgresServer{bindir: s.bindir, asUser: s.asUser}
	sock, _, _ := st.makeDir(t, "relaytest-pg-standby-")
	pu, err := url.Parse(s.URL)
	if err != nil {
		t.Fatalf("testenv: parse %q: %v", s.URL, err)
	}
	if out, err := st.run("pg_basebackup", "-D", st.data, "-h", pu.Hostname(), "-p", pu.Port(), "-U", "postgres",
		"-X", "stream", "-R", "-c", "fast", "--no-sync"); err != nil {
		t.Fatalf("testenv: pg_basebackup: %v\n%s", err, out)
	}
	port := freePort(t)
	st.URL = strings.Replace(s.URL, ":"+pu.Port()+"/", fmt.Sprintf(":%d/", port), 1)
	// The primary's options, on the standby's port and socket directory.
	st.opts = fmt.Sprintf("-p %d -k %s", port, sock) + s.opts[strings.Index(s.opts, " -c "):]
	st.opts += " -c application_name=relaytest_standby"
	t.Cleanup(func() { st.stop(t) })
	if out, err := st.run("pg_ctl", "-D", st.data, "-l", st.logfile, "-w", "-t", "60", "-o", st.opts, "start"); err != nil {
		t.Fatalf("testenv: standby did not start on port %d: %v\n%s\nserver log:\n%s", port, err, out, st.log())
	}
	if err := st.waitReady(); err != nil {
		t.Fatalf("testenv: standby on port %d not ready: %v\nserver log:\n%s", port, err, st.log())
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgReadyTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatalf("testenv: connect to the primary: %v", err)
	}
	defer conn.Close(context.Background())
	for {
		var streaming bool
		if err := conn.QueryRow(ctx, `SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'`).Scan(&streaming); err != nil {
			t.Fatalf("testenv: read pg_stat_replication: %v", err)
		}
		if streaming {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: the standby does not stream\nstandby log:\n%s", st.log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if sync {
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '*'`, `SELECT pg_reload_conf()`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("testenv: make the standby synchronous: %v", err)
			}
		}
		// Before the standby stops (cleanups run last first): a primary
		// still running would wait for it at every commit, the test
		// database's drop among them.
		t.Cleanup(func() {
			if s.stopped.Load() {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if conn, err := pgx.Connect(ctx, s.URL); err == nil {
				_, _ = conn.Exec(ctx, `ALTER SYSTEM RESET synchronous_standby_names`)
				_, _ = conn.Exec(ctx, `SELECT pg_reload_conf()`)
				conn.Close(ctx)
			}
		})
	}
	return st
}

// Crash stops the server at once ("pg_ctl stop -m immediate"): a primary
// that dies. It stays down.
func (s *PostgresServer) Crash(t testing.TB) { s.stop(t) }

// Promote makes a standby a primary and waits until it takes writes.
func (s *PostgresServer) Promote(t testing.TB) {
	t.Helper()
	if out, err := s.run("pg_ctl", "-D", s.data, "-w", "-t", "60", "promote"); err != nil {
		t.Fatalf("testenv: promote: %v\n%s\nserver log:\n%s", err, out, s.log())
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgReadyTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL)
		var recovering bool
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovering)
			conn.Close(context.Background())
		}
		if err == nil && !recovering {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: the promoted standby does not take writes (%v)\nserver log:\n%s", err, s.log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DatabaseURL returns the URL of database name on this server.
func (s *PostgresServer) DatabaseURL(t testing.TB, name string) string {
	t.Helper()
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatalf("testenv: parse %q: %v", s.URL, err)
	}
	return withDatabase(u, name)
}
