package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

// window is the most unconfirmed messages: the relay's (two batches of
// batchSize) and the raw publisher's, which splits it over its channels.
const batchSize = 500

var window = relay.Config{BatchSize: batchSize}.Window()

// relayDrain runs the relay on a backlog of n rows and returns rows per
// second from Run until the last row's position is recorded. It then checks
// the queue: n messages, no duplicates, each aggregate in order. With
// fromMemory, the backlog is read into memory before the clock starts and
// the relay's reads are served from there (its position writes still go
// to PostgreSQL): what the relay would do if reading cost nothing.
func relayDrain(t *testing.T, r *rig, n, channels int, fromMemory bool, cpu *cpuMeter) result {
	return relayDrainFrom(t, r, n, channels, fromMemory, postgres.SourcePoll, cpu)
}

// relayDrainFrom is relayDrain reading from source. For the logical
// source, the publication and slot are made before the backlog is
// written, so the backlog is in the slot.
func relayDrainFrom(t *testing.T, r *rig, n, channels int, fromMemory bool, source postgres.Source, cpu *cpuMeter) result {
	t.Helper()
	cfg := postgres.Config{URL: r.dbURL, Table: postgres.Table{Name: "outbox"}, Source: source}
	if source == postgres.SourceLogical {
		if _, err := postgres.SetUpLogical(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	r.fill(t, n)
	store, err := postgres.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	timed := &timedStore{Store: store}
	if fromMemory {
		if timed.memory = readAll(t, store); len(timed.memory) != n {
			t.Fatalf("read %d rows of the backlog into memory, want %d", len(timed.memory), n)
		}
	}
	broker, err := rabbitmq.New(rabbitmq.Config{URLs: r.relayURLs(), Channels: channels, Window: window})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = broker.Close() }()

	done := make(chan struct{})
	total := 0
	watch := &windowWatch{}
	rl, err := relay.New(relay.Config{BatchSize: batchSize, Observer: watch, Wake: store.Wake(), Hooks: relay.Hooks{
		Recorded: func(_ relay.Position, rows int) {
			// Runs on the relay's loop, so total needs no lock.
			if total += rows; total == n {
				close(done)
			}
		},
		RoundFailed: func(err error) { t.Errorf("relay round failed: %v", err) },
	}}, timed, broker)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	cpu0 := cpu.read()
	begin := time.Now()
	go func() { errc <- rl.Run(ctx) }()
	select {
	case <-done:
	case err := <-errc:
		t.Fatalf("relay stopped before draining: %v", err)
	case <-time.After(10 * time.Minute):
		t.Fatalf("relay did not record all %d rows in 10 minutes", n)
	}
	elapsed := time.Since(begin)
	used := cpu.read().sub(cpu0)
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if total != n {
		t.Fatalf("relay recorded %d rows, want %d", total, n)
	}
	r.checkDelivered(t, n)
	progress("   relay: %d reads took %s (%.0f%% of the drain, beside the loop), %d position writes %s; %.0f messages published and not yet recorded on average",
		timed.reads, timed.read.Round(time.Millisecond), 100*timed.read.Seconds()/elapsed.Seconds(),
		timed.records, timed.record.Round(time.Millisecond), watch.mean())
	return result{rate: float64(n) / elapsed.Seconds(), cpu: used}
}

// timedStore times the relay's reads and position writes, which run
// beside the relay's loop, one at a time each; the totals are read after
// Run has returned.
type timedStore struct {
	*postgres.Store
	mu             sync.Mutex
	read, record   time.Duration
	reads, records int
	memory         []relay.Row // the backlog, when reads are served from memory
}

func (s *timedStore) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	t0 := time.Now()
	var rows []relay.Row
	var err error
	if s.memory != nil {
		i := sort.Search(len(s.memory), func(i int) bool { return s.memory[i].Position().After(after) })
		rows = slices.Clone(s.memory[i:min(i+b.Rows, len(s.memory))])
	} else {
		rows, err = s.Store.Read(ctx, after, b)
	}
	s.mu.Lock()
	s.read += time.Since(t0)
	s.reads++
	s.mu.Unlock()
	return rows, err
}

// readAll reads the whole outbox, in publishing order.
func readAll(t *testing.T, store *postgres.Store) []relay.Row {
	t.Helper()
	var all []relay.Row
	var pos relay.Position
	for {
		rows, err := store.Read(context.Background(), pos, relay.Batch{Rows: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			return all
		}
		all = append(all, rows...)
		pos = rows[len(rows)-1].Position()
	}
}

func (s *timedStore) Record(ctx context.Context, pos relay.Position) error {
	t0 := time.Now()
	err := s.Store.Record(ctx, pos)
	s.mu.Lock()
	s.record += time.Since(t0)
	s.records++
	s.mu.Unlock()
	return err
}

// windowWatch is a relay.Observer that keeps the time-weighted mean of the
// messages published and not yet confirmed and recorded. The relay calls it
// from its loop only.
type windowWatch struct {
	inFlight int
	since    time.Time // of the last change
	area     float64   // message-seconds
	span     time.Duration
}

func (w *windowWatch) change(delta int) {
	now := time.Now()
	if !w.since.IsZero() {
		w.area += float64(w.inFlight) * now.Sub(w.since).Seconds()
		w.span += now.Sub(w.since)
	}
	w.since = now
	w.inFlight += delta
}

func (w *windowWatch) mean() float64 {
	if w.span == 0 {
		return 0
	}
	return w.area / w.span.Seconds()
}

func (w *windowWatch) Sent(n int)                       { w.change(n) }
func (w *windowWatch) Confirmed(n int, _ time.Duration) { w.change(-n) }
func (w *windowWatch) Alive()                           {}
func (w *windowWatch) Leading(bool)                     {}
func (w *windowWatch) Failed(relay.Failure)             {}
func (w *windowWatch) Blocked(bool)                     {}
func (w *windowWatch) Unlocked(int)                     {}
func (w *windowWatch) Skipped(int)                      {}

// rawRun and relayRun are runs of one kind for interleave.
func rawRun(queueType string, channels int, cpu *cpuMeter) run {
	return run{fmt.Sprintf("raw-%s-%dch", queueType, channels), func(t *testing.T) result {
		r := newRig(t, queueType)
		res := rawPublish(t, r, backlogRows, channels, window/channels, cpu)
		r.checkCount(t, backlogRows)
		return res
	}}
}

func relayRun(queueType string, channels int, cpu *cpuMeter) run {
	return run{fmt.Sprintf("relay-%s-%dch", queueType, channels), func(t *testing.T) result {
		return relayDrain(t, newRig(t, queueType), backlogRows, channels, false, cpu)
	}}
}

// relayFromMemoryRun is relayRun with the backlog served from memory.
func relayFromMemoryRun(queueType string, cpu *cpuMeter) run {
	return run{fmt.Sprintf("relay-%s-1ch-memory", queueType), func(t *testing.T) result {
		return relayDrain(t, newRig(t, queueType), backlogRows, 1, true, cpu)
	}}
}

// run is one kind of timed run; each call gets a fresh rig.
type run struct {
	name string
	fn   func(t *testing.T) result
}

// result is what one timed run measured: messages per second, and the CPU
// time the servers and this process spent meanwhile.
type result struct {
	rate float64
	cpu  cpuUse
}

// interleave runs each kind once per round, on fresh rigs, rotating which
// goes first from round to round (A B, B A, ...) so that a change of the
// machine's load hits all kinds alike. A run whose checks fail fails the
// test.
func interleave(t *testing.T, rounds int, runs ...run) results {
	t.Helper()
	rs := make(results, len(runs))
	for round := range rounds {
		for k := range runs {
			i := (round + k) % len(runs)
			name := fmt.Sprintf("round%d/%s", round+1, runs[i].name)
			var res result
			if !t.Run(name, func(t *testing.T) { res = runs[i].fn(t) }) {
				t.FailNow()
			}
			progress("   %-28s %s", name, perSecond(res.rate, "per s"))
			rs[i] = append(rs[i], res)
		}
	}
	return rs
}

// results holds each kind's runs, round by round.
type results [][]result

// median returns kind i's median rate.
func (rs results) median(i int) float64 {
	var xs []float64
	for _, r := range rs[i] {
		xs = append(xs, r.rate)
	}
	return median(xs)
}

// ratio returns the median over the rounds of kind i's rate over kind
// base's in the same round: runs of one round ran minutes apart at most,
// so their ratio is steadier than a ratio of medians.
func (rs results) ratio(i, base int) float64 { return median(rs.ratios(i, base)) }

// ratios returns kind i's rate over kind base's, round by round.
func (rs results) ratios(i, base int) []float64 {
	var rr []float64
	for round := range rs[i] {
		if rs[base][round].rate > 0 {
			rr = append(rr, rs[i][round].rate/rs[base][round].rate)
		}
	}
	return rr
}

// ratioText formats kind i's ratio to kind base, the median of the rounds,
// with the lowest and highest round: "0.97 × raw (rounds 0.90 to 1.04)".
// The spread says how far one round's ratio can be trusted on this
// machine.
func (rs results) ratioText(i, base int, of string) string {
	rr := rs.ratios(i, base)
	if len(rr) < 2 {
		return times(median(rr)) + " " + of
	}
	return fmt.Sprintf("%s %s (rounds %.2f to %.2f)", times(median(rr)), of, slices.Min(rr), slices.Max(rr))
}

// cpu returns kind i's median CPU use, party by party.
func (rs results) cpu(i int) cpuUse {
	var b, p, s []float64
	for _, r := range rs[i] {
		b, p, s = append(b, r.cpu.broker), append(p, r.cpu.postgres), append(s, r.cpu.self)
	}
	return cpuUse{median(b), median(p), median(s)}
}

// addCPU adds a row comparing the CPU time the raw run (kind raw) and the
// relay run (kind rel) cost per 100k messages.
func (s *suite) addCPU(rs results, raw, rel int, queueType string) {
	r, l := rs.cpu(raw), rs.cpu(rel)
	s.add(row{what: fmt.Sprintf("CPU seconds per 100k messages, %s queue, 1 channel (%s)", queueType, cpuSharing()),
		figure: "raw: " + s.cpu.describe(r, backlogRows, "publisher") + "; relay: " + s.cpu.describe(l, backlogRows, "relay"),
		ratio:  ratio(l.broker+l.postgres+l.self, r.broker+r.postgres+r.self) + " raw (total)"})
}

// cpuSharing says, for the CPU rows, whether the servers and the suite
// share the cores.
func cpuSharing() string {
	if pinning() != "" {
		return "broker and the rest pinned apart"
	}
	return fmt.Sprintf("%d cores for all", runtime.NumCPU())
}

// measureClassic: measurements 1 and 2, the raw publisher and the relay on
// a durable classic queue, one channel; and, from measurement 4, the relay
// with two channels on the same queue, in the same rounds.
func measureClassic(t *testing.T, s *suite) {
	rs := interleave(t, s.mode.rounds, rawRun(classic, 1, s.cpu), relayRun(classic, 1, s.cpu), relayRun(classic, 2, s.cpu))
	s.figures["relay-classic-1"] = rs.median(1)
	s.add(row{what: "raw amqp091-go publisher, classic queue, 1 channel, window 1000 (100k msgs)",
		figure: perSecond(rs.median(0), "msgs/s"), ratio: "1 (base)"})
	s.add(row{what: "relay drains a 100k backlog, classic queue, batch 500 (window 1000)",
		figure: perSecond(rs.median(1), "rows/s"), ratio: rs.ratioText(1, 0, "raw"),
		goal: "≥ 0.95 × raw", met: yesNo(rs.ratio(1, 0) >= 0.95)})
	s.add(row{what: "relay, classic queue, RELAY_CHANNELS=2",
		figure: perSecond(rs.median(2), "rows/s"), ratio: rs.ratioText(2, 1, "1 channel"),
		goal: "none: one classic queue is one process"})
	s.addCPU(rs, 0, 1, classic)
}

// measureQuorum: measurement 3, the same pair on a quorum queue.
func measureQuorum(t *testing.T, s *suite) {
	if !s.quorumOK(t) {
		return
	}
	rs := interleave(t, s.mode.rounds, rawRun(quorum, 1, s.cpu), relayRun(quorum, 1, s.cpu), relayFromMemoryRun(quorum, s.cpu))
	s.figures["raw-quorum-1"] = rs.median(0)
	s.add(row{what: "raw publisher, quorum queue, 1 channel, window 1000",
		figure: perSecond(rs.median(0), "msgs/s"), ratio: "1 (base)"})
	s.add(row{what: "relay drains a 100k backlog, quorum queue, 1 channel",
		figure: perSecond(rs.median(1), "rows/s"), ratio: rs.ratioText(1, 0, "raw"),
		goal: "≥ 0.95 × raw", met: yesNo(rs.ratio(1, 0) >= 0.95)})
	s.addCPU(rs, 0, 1, quorum)
	s.add(row{what: "diagnostic: the same drain with the backlog read into memory beforehand (reads cost nothing; position writes as usual)",
		figure: perSecond(rs.median(2), "rows/s"), ratio: rs.ratioText(2, 0, "raw")})
}

// measureChannels: measurement 4, several channels on a quorum queue. The
// raw publisher splits the relay's window of 1000 over its channels
// (1000/N each), so both have at most 1000 messages unconfirmed. Each
// channel count is its own pair of raw and relay runs, back to back.
func measureChannels(t *testing.T, s *suite) {
	if !s.quorumOK(t) {
		return
	}
	for _, n := range []int{2, 4} {
		rs := interleave(t, s.mode.rounds, rawRun(quorum, n, s.cpu), relayRun(quorum, n, s.cpu))
		raw1 := ""
		if r1 := s.figures["raw-quorum-1"]; r1 > 0 {
			raw1 = ratio(rs.median(0), r1) + " raw 1 channel (earlier rounds)"
		}
		s.add(row{what: fmt.Sprintf("raw publisher, quorum queue, %d channels, window %d each", n, window/n),
			figure: perSecond(rs.median(0), "msgs/s"), ratio: raw1})
		s.add(row{what: fmt.Sprintf("relay, quorum queue, RELAY_CHANNELS=%d", n),
			figure: perSecond(rs.median(1), "rows/s"), ratio: rs.ratioText(1, 0, "raw"),
			goal: "≥ 0.9 × raw", met: yesNo(rs.ratio(1, 0) >= 0.9)})
	}
}

// quorumOK reports whether the broker has quorum queues (RabbitMQ 3.8 and
// later), adding a row saying so when it has not.
func (s *suite) quorumOK(t *testing.T) bool {
	var major, minor int
	if _, err := fmt.Sscanf(s.rabbitVersion, "%d.%d", &major, &minor); err == nil && (major > 3 || major == 3 && minor >= 8) {
		return true
	}
	s.add(row{what: "quorum queue measurements", figure: "skipped: RabbitMQ " + s.rabbitVersion + " has no quorum queues (3.8 and later)"})
	return false
}
