// Command outbox-relay publishes committed rows of a PostgreSQL outbox table
// to RabbitMQ. Run `outbox-relay help` for commands and configuration.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/gcpercent"
)

func main() {
	gcpercent.Apply()
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code: 0 success,
// 2 bad configuration or usage, 1 anything else.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd, rest := "run", args
	if len(args) > 0 {
		cmd, rest = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCommand(ctx, rest, stderr)
	case "migrate":
		err = migrateCommand(ctx, rest, stdout, stderr)
	case "status":
		err = statusCommand(ctx, rest, stdout, stderr)
	case "dead":
		err = deadCommand(ctx, rest, stdout, stderr)
	case "replay":
		err = replayCommand(ctx, rest, stdout, stderr)
	case "health":
		err = healthCommand(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		printHelp(stdout)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "outbox-relay", version())
	default:
		err = &usageError{fmt.Sprintf("unknown command %q (see outbox-relay help)", cmd)}
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "outbox-relay:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "outbox-relay:", err)
		return 1
	}
}

// newLogger builds the process logger from RELAY_LOG_LEVEL and
// RELAY_LOG_FORMAT (already validated).
func newLogger(e *env, w io.Writer) *slog.Logger {
	level, _ := e.logLevel()
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if e.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(newThrottle(h, logThrottle))
}

// logThrottle is the shortest time between two warnings or errors with the
// same message about the same row (see throttle).
const logThrottle = 30 * time.Second
