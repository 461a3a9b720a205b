package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// cpuMeter reads the CPU time used by the broker, by PostgreSQL (the
// postmaster and all its processes, live and exited) and by this process,
// when the servers run on this machine as they do under make bench. On a
// small machine the three compete for the same cores, and the CPU they
// spend per message says whose limit a rate is.
type cpuMeter struct {
	beam, postmaster int // process ids; 0 when not found on this machine
}

// cpuUse is CPU time spent by each party, in seconds.
type cpuUse struct{ broker, postgres, self float64 }

func (c cpuUse) sub(d cpuUse) cpuUse {
	return cpuUse{c.broker - d.broker, c.postgres - d.postgres, c.self - d.self}
}

// newCPUMeter finds the broker's process through the management API and
// PostgreSQL's postmaster as the parent of a backend. A server it cannot
// find is left out of the figures.
func newCPUMeter(t *testing.T) *cpuMeter {
	m := &cpuMeter{}
	if api, err := url.Parse(os.Getenv("RELAY_TEST_RABBITMQ_API")); err == nil {
		// A node that has just started lists no os_pid until its first
		// statistics are in, a few seconds.
		for deadline := time.Now().Add(20 * time.Second); m.beam == 0 && time.Now().Before(deadline); {
			if m.beam = brokerPID(api); m.beam == 0 {
				time.Sleep(500 * time.Millisecond)
			}
		}
	}
	ctx := context.Background()
	if conn, err := pgx.Connect(ctx, testenv.Database(t)); err == nil {
		var backend int
		if conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend) == nil {
			m.postmaster, _ = procStat(backend, 1)
		}
		conn.Close(ctx)
	}
	return m
}

func brokerPID(api *url.URL) int {
	pass, _ := api.User.Password()
	req, err := http.NewRequest("GET", api.Scheme+"://"+api.Host+"/api/nodes", nil)
	if err != nil {
		return 0
	}
	req.SetBasicAuth(api.User.Username(), pass)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var nodes []struct {
		OSPid string `json:"os_pid"`
	}
	if json.NewDecoder(resp.Body).Decode(&nodes) != nil || len(nodes) != 1 {
		return 0 // a cluster: its other nodes' CPU would be missing
	}
	pid, _ := strconv.Atoi(nodes[0].OSPid)
	// The node runs elsewhere if its process id here is another program.
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || !strings.HasPrefix(string(comm), "beam") {
		return 0
	}
	return pid
}

// read returns the CPU time used so far.
func (m *cpuMeter) read() cpuUse {
	var u cpuUse
	if m.beam != 0 {
		u.broker = cpuSeconds(m.beam, true)
	}
	if m.postmaster != 0 {
		// Exited backends count in the postmaster's children's time,
		// live ones in their own.
		u.postgres = cpuSeconds(m.postmaster, true)
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ppid, err := procStat(pid, 1); err == nil && ppid == m.postmaster {
				u.postgres += cpuSeconds(pid, false)
			}
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	return u
}

// describe formats CPU seconds per 100k messages for a run of n.
func (m *cpuMeter) describe(u cpuUse, n int, self string) string {
	per := 100_000 / float64(n)
	var parts []string
	if m.beam != 0 {
		parts = append(parts, fmt.Sprintf("broker %.1f", u.broker*per))
	}
	if m.postmaster != 0 && u.postgres > 0.005*float64(n)/100_000 {
		parts = append(parts, fmt.Sprintf("PostgreSQL %.1f", u.postgres*per))
	}
	parts = append(parts, fmt.Sprintf("%s %.1f", self, u.self*per))
	return strings.Join(parts, " + ")
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times on Linux.
const clockTicks = 100

// cpuSeconds returns the user and system time of pid, with that of its
// waited-for children if asked.
func cpuSeconds(pid int, children bool) float64 {
	fields := []int{11, 12} // utime, stime
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	var sum float64
	for _, f := range fields {
		v, err := procStat(pid, f)
		if err != nil {
			return 0
		}
		sum += float64(v)
	}
	return sum / clockTicks
}

// procStat returns field i of /proc/PID/stat, counting from the state
// field (0) after the command name, which may hold spaces.
func procStat(pid, i int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	if i >= len(fields) {
		return 0, fmt.Errorf("/proc/%d/stat: no field %d", pid, i)
	}
	return strconv.Atoi(fields[i])
}
