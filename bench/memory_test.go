package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// rssGoal is measurement 8's goal for the relay's peak resident memory.
const rssGoal = 64 << 20

// measureMemory: measurement 8, the real relay binary draining a backlog of
// 100k rows (and 1M in the long version) with its default settings: peak
// resident memory and drain rate, and whether the rate holds as the backlog
// grows tenfold.
func measureMemory(t *testing.T, s *suite) {
	bin := buildRelay(t)
	var base float64
	for _, n := range s.mode.scaleRows {
		var res drained
		if !t.Run(fmt.Sprintf("rows=%d", n), func(t *testing.T) { res = drainBinary(t, bin, n) }) {
			continue
		}
		progress("   %d rows: %s (first tenth %s, last tenth %s), peak RSS %s (VmHWM), %s (sampled VmRSS)",
			n, perSecond(res.rate, "rows/s"), perSecond(res.firstTenth, "rows/s"), perSecond(res.lastTenth, "rows/s"),
			mb(res.hwm), mb(res.maxRSS))
		rate := row{what: fmt.Sprintf("relay binary drains a %s-row backlog (defaults, classic queue, live consumer)", group(int64(n))),
			figure: fmt.Sprintf("%s (first tenth %s, last tenth %s)", perSecond(res.rate, "rows/s"),
				perSecond(res.firstTenth, "/s"), perSecond(res.lastTenth, "/s"))}
		if base == 0 {
			base = res.rate
			rate.ratio = "1 (base)"
		} else {
			rate.ratio = ratio(res.rate, base) + " 100k"
			rate.goal = "within 10 % of 100k"
			rate.met = yesNo(res.rate >= 0.9*base && res.rate <= 1.1*base)
		}
		s.add(rate)
		s.add(row{what: fmt.Sprintf("relay binary's peak resident memory, %s-row backlog", group(int64(n))),
			figure: fmt.Sprintf("%s VmHWM (max sampled VmRSS %s)", mb(res.hwm), mb(res.maxRSS)),
			goal:   "≤ 64 MB", met: yesNo(max(res.hwm, res.maxRSS) <= rssGoal)})
	}
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// buildRelay builds cmd/outbox-relay into a temporary directory, without
// the race detector, which would distort the figures.
func buildRelay(t *testing.T) string {
	bin, err := testenv.BuildRelay(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// drained is what one run of the binary measured.
type drained struct {
	rate float64 // rows per second, from the first message consumed to the last
	// firstTenth and lastTenth are the rates over the first and the last
	// tenth of the backlog: a relay slowing down as it goes deeper into
	// the table would show here.
	firstTenth, lastTenth float64
	hwm                   int64 // VmHWM at the end, bytes
	maxRSS                int64 // the largest VmRSS sampled every 100 ms, bytes
}

// drainBinary runs the relay binary on a backlog of n rows until a
// consumer has taken all n messages (distinct, each aggregate in order) and
// `outbox-relay status --json` reports nothing pending, then reads its peak
// memory and stops it with SIGTERM.
func drainBinary(t *testing.T, bin string, n int) drained {
	r := newRig(t, classic)
	r.fill(t, n)
	env := append(os.Environ(),
		"RELAY_DATABASE_URL="+r.dbURL, "RELAY_AMQP_URL="+r.vhost.URL,
		"RELAY_RETENTION=0", "RELAY_LOG_LEVEL=warn", "RELAY_REPLICA_NAME=bench")
	cmd := exec.Command(bin, "run")
	cmd.Env = env
	// A file, not a buffer: the child writes it directly, so reading it
	// on failure races with nothing.
	logs, err := os.Create(filepath.Join(t.TempDir(), "relay.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd.Stderr = logs
	// A consumer keeps the queue short, so a long backlog measures the
	// relay, not a broker holding a million messages.
	c := r.consume(t, n)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	pid := cmd.Process.Pid

	var maxRSS int64 // read after wg.Wait
	sampling, stopSampling := context.WithCancel(context.Background())
	defer stopSampling()
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, err := procStatus(pid, "VmRSS"); err == nil {
				maxRSS = max(maxRSS, rss)
			}
			select {
			case <-sampling.Done():
				return
			case <-tick.C:
			}
		}
	})

	select {
	case <-c.all:
	case err := <-exited:
		stopped = true
		t.Fatalf("relay exited early: %v\n%s", err, tail(logs.Name()))
	case <-time.After(20 * time.Minute):
		t.Fatalf("%d of %d messages consumed after 20 minutes\n%s", c.count(), n, tail(logs.Name()))
	}
	waitNothingPending(t, bin, env)

	stopSampling()
	wg.Wait()
	// Read last, so it covers every sample: the kernel's high-water mark
	// of the resident set.
	hwm, err := procStatus(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("relay exited with %v after SIGTERM\n%s", err, tail(logs.Name()))
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("relay still running 60 s after SIGTERM\n%s", tail(logs.Name()))
	}
	c.check(t)
	// From the first message consumed to the last: process start-up and
	// connecting stay out.
	return drained{rate: c.rate(0, 10), firstTenth: c.rate(0, 1), lastTenth: c.rate(9, 10), hwm: hwm, maxRSS: maxRSS}
}

// waitNothingPending runs `outbox-relay status --json` until it reports no
// pending rows: the relay has recorded its position past every row.
func waitNothingPending(t *testing.T, bin string, env []string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cmd := exec.Command(bin, "status", "--json")
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("outbox-relay status --json: %v\n%s", err, out)
		}
		field, err := jsonField(out, "pending")
		if err != nil {
			t.Fatalf("outbox-relay status --json: %v", err)
		}
		var pending int64
		if err := json.Unmarshal(field, &pending); err != nil {
			t.Fatalf("outbox-relay status --json: pending: %v", err)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows still pending 60 s after the queue held them all", pending)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tail returns the end of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-8<<10):])
}

// procStatus reads a "kB" field of /proc/PID/status, in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, field, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}
