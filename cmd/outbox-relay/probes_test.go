package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// get fetches a path of the relay's HTTP server: status code and body, or
// code 0 while it does not answer.
func get(addr, path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric reads one sample of the relay's /metrics ("name" or
// `name{label="value"}`); -1 if absent.
func metric(addr, name string) float64 {
	code, body := get(addr, "/metrics")
	if code != http.StatusOK {
		return -1
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// eventually polls cond until it holds or 60 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

func TestMetricsAndProbesWhileDelivering(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	addr := freeAddr(t)
	r.write(t, 3)
	p := start(t, append(r.env, "RELAY_HTTP_ADDR="+addr))
	eventually(t, "/readyz answers 200", func() bool { code, _ := get(addr, "/readyz"); return code == http.StatusOK })
	if code, body := get(addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %s", code, body)
	}
	eventually(t, "rows are published", func() bool { return metric(addr, "outbox_relay_rows_published_total") > 0 })
	r.stopWrites()
	r.drained(t)

	committed := float64(r.ledger.CommittedCount())
	eventually(t, "rows_published_total reaches the rows committed", func() bool {
		return metric(addr, "outbox_relay_rows_published_total") >= committed
	})
	eventually(t, "pending_rows falls to 0", func() bool { return metric(addr, "outbox_relay_pending_rows") == 0 })
	for name, want := range map[string]float64{
		"outbox_relay_leader":         1,
		"outbox_relay_database_up":    1,
		"outbox_relay_broker_up":      1,
		"outbox_relay_broker_blocked": 0,
		"outbox_relay_dead_rows":      0,
	} {
		if got := metric(addr, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n := metric(addr, "outbox_relay_confirm_latency_seconds_count"); n < 1 {
		t.Errorf("confirm_latency_seconds_count = %v, want at least one confirm", n)
	}
	stopClean(t, p)
}

func TestReadyzFailsWithoutBroker(t *testing.T) {
	t.Parallel()
	dbURL := testenv.Database(t)
	addr := freeAddr(t)
	p := start(t, []string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=amqp://guest:guest@127.0.0.1:1/",
		"RELAY_HTTP_ADDR=" + addr, "RELAY_POLL_INTERVAL=20ms"})
	pool := newPool(t, dbURL)
	if _, err := pool.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
		VALUES ('a', '1', 'E', 'k', '{}')`); err != nil {
		t.Fatal(err)
	}
	eventually(t, "/readyz says the broker is missing", func() bool {
		code, body := get(addr, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no connection to the broker")
	})
	// The loop goes on retrying: alive, so no restart is asked for.
	if code, body := get(addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %s while retrying", code, body)
	}
	eventually(t, "broker failures are counted", func() bool {
		return metric(addr, `outbox_relay_publish_failures_total{reason="broker"}`) > 0
	})
	// The row gauges are sampled every few seconds: the first sample may
	// predate the insert.
	eventually(t, "pending_rows counts the unpublished row", func() bool {
		return metric(addr, "outbox_relay_pending_rows") == 1
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.log())
	}
}

// TestThrottleLimitsRepeatedWarnings: the same warning within the interval
// is dropped and counted; info lines and other messages always pass.
func TestThrottleLimitsRepeatedWarnings(t *testing.T) {
	var out strings.Builder
	log := slog.New(newThrottle(slog.NewTextHandler(&out, nil), time.Hour))
	for range 5 {
		log.Warn("cannot take the lease; retrying", "attempt", 1)
		log.Info("state changed")
	}
	log.Error("other failure")
	text := out.String()
	if n := strings.Count(text, "cannot take the lease"); n != 1 {
		t.Errorf("%d copies of the repeated warning, want 1:\n%s", n, text)
	}
	if n := strings.Count(text, "state changed"); n != 5 {
		t.Errorf("%d info lines, want all 5", n)
	}
	if !strings.Contains(text, "other failure") {
		t.Error("a different error was dropped")
	}

	// The interval is measured on the records' own times.
	out.Reset()
	h := newThrottle(slog.NewTextHandler(&out, nil), time.Second)
	t0 := time.Now()
	for _, at := range []time.Time{t0, t0.Add(time.Second + time.Nanosecond)} {
		if err := h.Handle(context.Background(), slog.NewRecord(at, slog.LevelWarn, "again", 0)); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(out.String(), "again"); n != 2 {
		t.Errorf("%d lines after the interval passed, want 2:\n%s", n, out.String())
	}
}
