package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgReadyTimeout bounds how long NewPostgresServer and Restart wait for the
// server to accept connections.
const pgReadyTimeout = 30 * time.Second

// pgCtlTimeout bounds each initdb and pg_ctl command.
const pgCtlTimeout = 90 * time.Second

// PostgresServer is a PostgreSQL server of one test's own, for tests that
// restart or stop the database. It is stopped and removed when the test ends.
//
// It keeps PostgreSQL's durability defaults (fsync, synchronous_commit), so
// data committed before Restart is there after it.
type PostgresServer struct {
	// URL is the admin URL of the server: database "postgres", user
	// "postgres", postgres://postgres@127.0.0.1:PORT/postgres.
	URL string

	bindir  string   // directory holding initdb and pg_ctl
	dir     string   // temporary directory holding everything below
	data    string   // data directory
	logfile string   // server log
	opts    string   // pg_ctl -o options: port, socket dir, settings
	asUser  []string // command prefix running as the postgres user, if root
	stopped atomic.Bool
}

// NewPostgresServer starts a throwaway PostgreSQL with initdb and pg_ctl in a
// temporary directory on a free 127.0.0.1 port.
//
// initdb and pg_ctl are taken from PATH, else from the newest
// /usr/lib/postgresql/*/bin. When the test runs as root, the server runs as
// the "postgres" user (initdb refuses root). The server is stopped with
// "pg_ctl stop -m immediate" and its directory removed when the test ends.
//
// A test binary killed before its cleanups run (e.g. by the -timeout panic)
// leaves the server running; its directory name starts with "relaytest-pg-".
func NewPostgresServer(t testing.TB) *PostgresServer {
	t.Helper()
	return NewPostgresServerWith(t, PostgresOptions{})
}

// PostgresOptions shape a server of NewPostgresServerWith.
type PostgresOptions struct {
	// TLS, when set, makes the server take TCP connections over TLS only,
	// with its server certificate (for localhost), authenticating clients
	// by a certificate of its CA (pg_hba "cert": the common name is the
	// user). URL then names localhost with sslmode=verify-full and the
	// client certificate.
	TLS *TLSFiles
}

// NewPostgresServerWith is NewPostgresServer with options.
func NewPostgresServerWith(t testing.TB, o PostgresOptions) *PostgresServer {
	t.Helper()
	s := &PostgresServer{bindir: pgBindir(t), asUser: runAs(t, "PostgreSQL", "postgres")}
	sock, uid, gid := s.makeDir(t, "relaytest-pg-")

	// --locale=C avoids a mismatch between -E UTF8 and the environment's locale.
	if out, err := s.run("initdb", "-D", s.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatalf("testenv: initdb failed (is %s reachable by user postgres?): %v\n%s", s.dir, err, out)
	}

	port := freePort(t)
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", port)
	s.opts = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100 -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20", port, sock)
	if f := o.TLS; f != nil {
		files := installFiles(t, s.data, uid, gid, f.ServerCert, f.ServerKey, f.CA)
		hba := "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostssl replication all 127.0.0.1/32 cert\n"
		if err := os.WriteFile(filepath.Join(s.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
			t.Fatalf("testenv: write pg_hba.conf: %v", err)
		}
		s.opts += fmt.Sprintf(" -c ssl=on -c ssl_cert_file=%s -c ssl_key_file=%s -c ssl_ca_file=%s", files[0], files[1], files[2])
		s.URL = fmt.Sprintf("postgres://postgres@localhost:%d/postgres?%s", port, url.Values{"sslmode": {"verify-full"},
			"sslrootcert": {f.CA}, "sslcert": {f.ClientCert}, "sslkey": {f.ClientKey}}.Encode())
	}

	// Registered before starting: a start that timed out may have left a
	// postmaster behind.
	t.Cleanup(func() { s.stop(t) })
	if out, err := s.run("pg_ctl", "-D", s.data, "-l", s.logfile, "-w", "-t", "60", "-o", s.opts, "start"); err != nil {
		t.Fatalf("testenv: PostgreSQL did not start on port %d: %v\n%s\nserver log:\n%s", port, err, out, s.log())
	}
	if err := s.waitReady(); err != nil {
		t.Fatalf("testenv: PostgreSQL on port %d not ready: %v\nserver log:\n%s", port, err, s.log())
	}
	return s
}

// Database creates a fresh database on this server with outboxrelay.Schema
// applied and returns its URL. Like the package-level Database, the database
// is dropped when the test that created it ends (unless the server is gone
// by then).
func (s *PostgresServer) Database(t testing.TB) string {
	t.Helper()
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatalf("testenv: parse %q: %v", s.URL, err)
	}
	name := randomName("t_")
	createDatabase(t, s.URL, "PostgreSQL server of the test", name)
	t.Cleanup(func() {
		if !s.stopped.Load() {
			dropDatabase(t, s.URL, name)
		}
	})
	dbURL := withDatabase(u, name)
	applySchema(t, dbURL)
	return dbURL
}

// Restart runs "pg_ctl restart -m immediate" (a crash: no shutdown
// checkpoint, so the server runs crash recovery when it starts again) and
// waits until the server accepts connections again. Open connections to the
// server break.
func (s *PostgresServer) Restart(t testing.TB) {
	t.Helper()
	// -l as at start: without it the new postmaster would write to pg_ctl's
	// stdout, our pipe, and the command would never finish.
	if out, err := s.run("pg_ctl", "-D", s.data, "-l", s.logfile, "-m", "immediate", "-w", "-t", "60",
		"-o", s.opts, "restart"); err != nil {
		t.Fatalf("testenv: restart PostgreSQL: %v\n%s\nserver log:\n%s", err, out, s.log())
	}
	if err := s.waitReady(); err != nil {
		t.Fatalf("testenv: PostgreSQL not ready after restart: %v\nserver log:\n%s", err, s.log())
	}
}

// stop stops the server, killing the postmaster if pg_ctl fails, and waits
// for the postmaster to exit: pg_ctl returns once the postmaster has removed
// its pid file, a moment before it exits.
func (s *PostgresServer) stop(t testing.TB) {
	s.stopped.Store(true)
	pid := s.postmasterPID()
	if pid == 0 {
		return // never started
	}
	if out, err := s.run("pg_ctl", "-D", s.data, "-m", "immediate", "-w", "-t", "30", "stop"); err != nil {
		t.Errorf("testenv: stop PostgreSQL: %v\n%s", err, out)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if processExited(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("testenv: PostgreSQL postmaster %d still running 10 s after stop", pid)
}

// processExited reports whether process pid has exited: it is gone, or a
// zombie. The postmaster is a zombie until its parent reaps it: pg_ctl
// detaches it, so that is PID 1, which in some containers reaps only every
// second or two.
func processExited(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	// /proc/PID/stat is "PID (COMM) STATE ..."; COMM may contain ") ".
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	b = b[bytes.LastIndex(b, []byte(") "))+2:]
	return len(b) > 0 && (b[0] == 'Z' || b[0] == 'X')
}

// postmasterPID returns the pid in the server's postmaster.pid, or 0.
func (s *PostgresServer) postmasterPID() int {
	b, _ := os.ReadFile(filepath.Join(s.data, "postmaster.pid"))
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	return pid
}

// run runs the PostgreSQL program name from s.bindir, as the postgres user
// when we are root, and returns its combined output.
func (s *PostgresServer) run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgCtlTimeout)
	defer cancel()
	argv := append([]string{filepath.Join(s.bindir, name)}, args...)
	return runCombined(userCommand(ctx, s.asUser, s.dir, argv...))
}

// waitReady connects to the server until it accepts a connection.
func (s *PostgresServer) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), pgReadyTimeout)
	defer cancel()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(attempt, s.URL)
		if err == nil {
			err = conn.Ping(attempt)
			conn.Close(attempt)
		}
		cancelAttempt()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// log returns the end of the server log.
func (s *PostgresServer) log() string {
	b, err := os.ReadFile(s.logfile)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(logTail(b))
}

// pgBindir returns the directory of initdb and pg_ctl: that of pg_ctl on
// PATH, else the newest /usr/lib/postgresql/*/bin.
func pgBindir(t testing.TB) string {
	t.Helper()
	if dir := bindirOnPath("pg_ctl", "initdb"); dir != "" {
		return dir
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	t.Fatalf("testenv: initdb and pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL's server package (\"make test\" does, as root)")
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// freePort returns a TCP port on 127.0.0.1 that nothing listened on a moment
// ago. Another process may take it before the server binds it; the server
// then fails to start, with "could not bind" in its log.
//
// It picks ports below the kernel's ephemeral range (32768 and up by
// default): a port there can be taken by any outgoing connection between
// this check and the server's bind, which then fails with EADDRINUSE.
func freePort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.N(low-10000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// makeDir creates the server's temporary directory (its name starting with
// pattern), its socket directory, and the paths of its data and log, owned
// by the postgres user when the test runs as root: initdb creates the data
// directory in it, pg_ctl the log file. It returns the socket directory and
// the owner's uid and gid (-1 when not root).
func (s *PostgresServer) makeDir(t testing.TB, pattern string) (sock string, uid, gid int) {
	t.Helper()
	s.dir = serverDir(t, "PostgreSQL", pattern)
	sock = filepath.Join(s.dir, "sock")
	s.data = filepath.Join(s.dir, "data")
	s.logfile = filepath.Join(s.dir, "postgres.log")
	if err := os.Mkdir(sock, 0o755); err != nil {
		t.Fatalf("testenv: create PostgreSQL socket directory: %v", err)
	}
	uid, gid = -1, -1
	if s.asUser != nil {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("testenv: running as root, but there is no postgres user to run PostgreSQL as (install postgresql): %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		for _, p := range []string{s.dir, sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatalf("testenv: chown %s to postgres: %v", p, err)
			}
		}
	}
	return sock, uid, gid
}
