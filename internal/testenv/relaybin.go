package testenv

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// BuildRelay builds the outbox-relay command into dir and returns the
// binary's path, with the race detector when race is set. It takes no
// testing.TB so that a TestMain can call it before any test runs.
func BuildRelay(dir string, race bool) (string, error) {
	bin := filepath.Join(dir, "outbox-relay")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	// By import path, so it builds from any package of the module.
	cmd := exec.Command("go", append(args, "github.com/outboxrelay/outboxrelay/cmd/outbox-relay")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build outbox-relay: %w\n%s", err, out)
	}
	return bin, nil
}
