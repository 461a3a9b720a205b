package testenv

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// This file holds what the servers of one test's own (PostgresServer,
// RabbitServer) share: a directory, a user to run as, their programs and
// logs. product ("PostgreSQL", "RabbitMQ") names the server in errors.

// serverDir creates a temporary directory for a server, removed when the
// test ends. It is made 0755 (MkdirTemp makes it 0700) so that the server's
// user reaches it.
func serverDir(t testing.TB, product, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp(os.TempDir(), pattern)
	if err != nil {
		t.Fatalf("testenv: create %s directory: %v", product, err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("testenv: remove %s directory: %v", product, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testenv: chmod %s directory: %v", product, err)
	}
	return dir
}

// runAs returns the command prefix that runs a server's programs as the
// user name when the test runs as root, and nil otherwise.
func runAs(t testing.TB, product, name string) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	runuser, err := exec.LookPath("runuser")
	if err != nil {
		t.Fatalf("testenv: running as root, but runuser, needed to run %s as user %s, is not found: %v", product, name, err)
	}
	return []string{runuser, "-u", name, "--"}
}

// userCommand returns a command running argv, the program first, with the
// prefix asUser (from runAs) in dir, the server's directory: the server's
// user may not reach our working directory.
func userCommand(ctx context.Context, asUser []string, dir string, argv ...string) *exec.Cmd {
	argv = slices.Concat(asUser, argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	return cmd
}

// runCombined runs cmd and returns its combined output.
func runCombined(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Do not wait for stray holders of the pipe past the timeout.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// bindirOnPath returns the directory of program on PATH, links resolved,
// if it holds companion too, and "" otherwise.
func bindirOnPath(program, companion string) string {
	path, err := exec.LookPath(program)
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	dir := filepath.Dir(path)
	if !isExecutable(filepath.Join(dir, companion)) {
		return ""
	}
	return dir
}

// logTail returns the end of a server log, at most 16 KiB of it.
func logTail(b []byte) []byte {
	const max = 16 << 10
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	return b
}
