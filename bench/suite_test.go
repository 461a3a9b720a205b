package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/gcpercent"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

var (
	suiteFlag  = flag.Bool("bench.suite", false, "run the benchmark suite (make bench); without it TestSuite skips")
	longFlag   = flag.Bool("bench.long", false, "long version: more rounds, longer runs, a 1,000,000-row backlog")
	outFlag    = flag.String("bench.out", "../bench-results.md", "file the results table is written to")
	roundsFlag = flag.Int("bench.rounds", 0, "rounds of each raw/relay pair instead of the mode's (2 quick, 9 long)")
	onlyFlag   = flag.String("bench.only", "", "run only the measurements whose name matches this regexp (drain, quorum, cluster, channels, logical, partitions, read, latency, writer-cost, lock-cost, memory, write)")
)

// mode holds the sizes and durations of one version of the suite.
type mode struct {
	name          string
	rounds        int           // interleaved rounds of each raw/relay pair: medians of rates, and of each round's ratio
	latencyFor    time.Duration // how long rows are written at 1000/s
	writerRounds  int           // pgbench rounds per writer-cost variant
	writerSeconds int           // seconds per pgbench run
	scaleRows     []int         // backlogs the relay binary drains
	writeFor      time.Duration // how long outbox.Write is timed
}

var (
	quick = mode{name: "quick", rounds: 2, latencyFor: 5 * time.Second, writerRounds: 3, writerSeconds: 10,
		scaleRows: []int{100_000}, writeFor: 2 * time.Second}
	long = mode{name: "long", rounds: 9, latencyFor: 30 * time.Second, writerRounds: 5, writerSeconds: 20,
		scaleRows: []int{100_000, 1_000_000}, writeFor: 10 * time.Second}
)

// backlogRows is the backlog of the drain measurements.
const backlogRows = 100_000

// measurement is one section of the suite; its name is what -bench.only
// matches.
type measurement struct {
	name string
	run  func(t *testing.T, s *suite)
}

// measurements run in this order; later ones use figures of earlier ones
// for their ratios when those ran.
var measurements = []measurement{
	{"drain", measureClassic},
	{"quorum", measureQuorum},
	{"cluster", measureCluster},
	{"channels", measureChannels},
	{"logical", measureLogical},
	{"partitions", measurePartitions},
	{"read", measureRead},
	{"latency", measureLatency},
	{"writer-cost", measureWriterCost},
	{"lock-cost", measureLockCost},
	{"memory", measureMemory},
	{"write", measureWrite},
}

// TestSuite runs every measurement once and writes the results table.
func TestSuite(t *testing.T) {
	if !*suiteFlag {
		t.Skip("the benchmark suite runs with -bench.suite (make bench)")
	}
	only, err := regexp.Compile(*onlyFlag)
	if err != nil {
		t.Fatalf("-bench.only: %v", err)
	}
	s := &suite{mode: quick, figures: map[string]float64{}}
	if *longFlag {
		s.mode = long
	}
	if *roundsFlag > 0 {
		s.mode.rounds = *roundsFlag
	}
	// The relay and the raw publisher run in this process: both under the
	// relay binary's garbage-collection target, as the binary would be.
	s.gogc = gcpercent.Apply()
	s.describeMachine(t)
	s.cpu = newCPUMeter(t)
	progress("%s, %s mode", s.machine, s.mode.name)
	began := time.Now()
	for _, m := range measurements {
		if !only.MatchString(m.name) {
			continue
		}
		start := time.Now()
		progress("== %s", m.name)
		if !t.Run(m.name, func(t *testing.T) { m.run(t, s) }) {
			s.add(row{what: m.name + ": FAILED (see the test output)", figure: "-", ratio: "-", goal: "-", met: "no"})
		}
		progress("   %s took %s", m.name, time.Since(start).Round(time.Second))
	}
	s.took = time.Since(began)
	table := s.markdown()
	fmt.Fprintln(os.Stderr)
	fmt.Fprint(os.Stderr, table)
	if err := os.WriteFile(*outFlag, []byte(table), 0o644); err != nil {
		t.Errorf("write %s: %v", *outFlag, err)
	} else {
		progress("results written to %s", *outFlag)
	}
}

// suite collects the rows of the results table.
type suite struct {
	mode    mode
	machine string
	// rabbitVersion is the broker's version, e.g. "3.10.8".
	rabbitVersion string
	gogc          string // the GOGC this process runs with
	cpu           *cpuMeter
	rows          []row
	figures       map[string]float64 // by key, for ratios across measurements
	took          time.Duration
}

// row is one line of the results table.
type row struct{ what, figure, ratio, goal, met string }

func (s *suite) add(r row) {
	for _, p := range []*string{&r.figure, &r.ratio, &r.goal, &r.met} {
		if *p == "" {
			*p = "-"
		}
	}
	s.rows = append(s.rows, r)
}

// markdown renders the machine line, the mode and the table.
func (s *suite) markdown() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Machine: %s.\n\n", s.machine)
	fmt.Fprintf(&b, "Mode: %s (%d rounds per raw/relay pair: rates are medians, ratios the median of each round's ratio; latency %s at 1000 rows/s; "+
		"writer cost %d x %d s; relay binary on %s rows). The suite took %s.\n\n",
		s.mode.name, s.mode.rounds, s.mode.latencyFor, s.mode.writerRounds, s.mode.writerSeconds,
		joinInts(s.mode.scaleRows), s.took.Round(time.Second))
	b.WriteString("| what | figure | ratio | goal | met? |\n|---|---|---|---|---|\n")
	for _, r := range s.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.what, r.figure, r.ratio, r.goal, r.met)
	}
	return b.String()
}

// progress tells a human watching that the suite is working.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// describeMachine sets the machine line: cores, Go, the servers' versions,
// date and load.
func (s *suite) describeMachine(t *testing.T) {
	ctx := context.Background()
	pgVersion := "?"
	if conn, err := pgx.Connect(ctx, testenv.Database(t)); err == nil {
		_ = conn.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)
		conn.Close(ctx)
	}
	s.rabbitVersion = "?"
	if conn, err := amqp.Dial(testenv.NewBroker(t).URL); err == nil {
		if v, ok := conn.Properties["version"].(string); ok {
			s.rabbitVersion = v
		}
		conn.Close()
	}
	load, _ := os.ReadFile("/proc/loadavg")
	s.machine = fmt.Sprintf("%d cores%s, %s (GOGC %s), RabbitMQ %s, PostgreSQL %s, %s, load average %s at start",
		machineCores(), pinning(), runtime.Version(), s.gogc, s.rabbitVersion, pgVersion, time.Now().Format("2006-01-02 15:04 MST"),
		strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
}

// machineCores counts the CPUs the suite may use, or, when make bench
// BENCH_PIN=1 pinned it to some of them, the machine's.
func machineCores() int {
	if pinning() == "" {
		return runtime.NumCPU()
	}
	info, _ := os.ReadFile("/proc/cpuinfo")
	n := 0
	for line := range strings.Lines(string(info)) {
		if strings.HasPrefix(line, "processor") {
			n++
		}
	}
	if n == 0 {
		return runtime.NumCPU()
	}
	return n
}

// pinning describes where make bench BENCH_PIN=1 put the servers and the
// suite (scripts/servers.sh's SERVERS_BROKER_CPUS and SERVERS_OTHER_CPUS),
// or nothing when they share every CPU.
func pinning() string {
	broker, other := os.Getenv("SERVERS_BROKER_CPUS"), os.Getenv("SERVERS_OTHER_CPUS")
	if broker == "" || other == "" {
		return ""
	}
	return fmt.Sprintf(" (broker pinned to CPU %s; PostgreSQL, the relay and the raw publisher to CPU %s)", broker, other)
}

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// perSecond formats a rate with thin grouping, e.g. "16 700".
func perSecond(rate float64, unit string) string {
	return group(int64(rate+0.5)) + " " + unit
}

func group(n int64) string {
	s := fmt.Sprint(n)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			out = append(out, ' ')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = group(int64(x))
	}
	return strings.Join(parts, " and ")
}

// ratio formats a/b as "0.97 ×", or "-" without a base.
func ratio(a, b float64) string {
	if b == 0 || a == 0 {
		return "-"
	}
	return times(a / b)
}

// times formats a ratio as "0.97 ×".
func times(r float64) string { return fmt.Sprintf("%.2f ×", r) }

// atLeast reports whether a/b meets goal, as "yes", "no" or "-".
func atLeast(a, b, goal float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return yesNo(a/b >= goal)
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}
