// Package cli is what the example programs share as commands: each is
// "program command [flags]", runs until SIGINT or SIGTERM, and exits with a
// status that scripts/demo.sh reads: 0 when every check passed, 1 when a
// check failed ([ErrCheckFailed]), 2 when anything else went wrong.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// ErrCheckFailed is matched by the error of a command that ran, and whose
// check found a broken guarantee: events lost, out of order, or views that
// disagree. [Main] exits with status 1 for it, and 2 for any other error,
// so that a script can tell them apart.
var ErrCheckFailed = errors.New("check failed")

// Main runs run with the program's arguments and a context that ends at
// the first SIGINT or SIGTERM, then exits with the status its error calls
// for, printing an error other than [ErrCheckFailed] after the program's
// name.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, ErrCheckFailed):
		os.Exit(1)
	default:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
}

// NewFlagSet returns the flag set of program name. It reports to stderr,
// and its usage is usage followed by the flags and their defaults.
func NewFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	return fs
}

// Command takes the command from args[0] and parses the flags that follow
// it into fs. It returns an empty command when there is nothing to run,
// with the usage printed: help was asked for (the error is nil), or args
// were missing or wrong (the error says what).
func Command(fs *flag.FlagSet, args []string) (string, error) {
	if len(args) == 0 {
		fs.Usage()
		return "", errors.New("missing command")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fs.Usage()
		return "", nil
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", nil // the flag package printed the usage
		}
		return "", err
	}
	return args[0], nil
}

// Unknown prints the usage and returns the error for command cmd, which
// the program does not have.
func Unknown(fs *flag.FlagSet, cmd string) error {
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}
