package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// errHelp means -h was given and the usage was printed: exit 0.
var errHelp = errors.New("help printed")

// parseFlags parses a subcommand's flags, turning every problem into a
// usage error (exit 2).
func parseFlags(fs *flag.FlagSet, args []string, usage string, w io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(w, usage)
			fs.SetOutput(w)
			fs.PrintDefaults()
			return errHelp
		}
		return &usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}
