package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

// Sizes of the partitions measurement (RELAY_PARTITIONS).
const (
	// sharedParts is the partition count of the drains shared among
	// replicas.
	sharedParts = 12
	// sharedQueues is how many classic queues the shared drains publish
	// to, each aggregate's messages to one of them: one classic queue is
	// one broker process, which would bound every replica alike.
	sharedQueues = 6
	// readRepeats is how many times each reader reads the whole backlog
	// in the read-cost runs, so that PostgreSQL's CPU time is many of the
	// kernel's 10 ms ticks.
	readRepeats = 3
)

// replicaCounts are the numbers of relay replicas, and of raw publisher
// connections, that share the drains.
var replicaCounts = []int{1, 2, 3}

// partOf is the partition of message (and row) i's aggregate among p.
func partOf(i, p int) int { return relay.Aggregate{Type: "order", ID: aggregateOf(i)}.Partition(p) }

// holderOf is which of n replicas holds partition k of p once the shares
// have settled in openShares: contiguous runs, the first replica the
// lowest.
func holderOf(k, p, n int) int { return k * n / p }

// openShares opens, starts and places `replicas` stores on the rig's table
// in p partitions, named bench-1, bench-2, ..., each holding its share
// (p/replicas partitions) when it returns. Each store first notes itself
// as running (the first takes every partition, as it is alone); then all
// release and take their shares in name order, as replicas that find each
// other running do.
func openShares(t *testing.T, r *rig, p, replicas int) []*postgres.Store {
	t.Helper()
	ctx := context.Background()
	stores := make([]*postgres.Store, replicas)
	for i := range stores {
		s, err := postgres.Open(postgres.Config{URL: r.dbURL, Table: postgres.Table{Name: "outbox"},
			Replica: fmt.Sprintf("bench-%d", i+1), Partitions: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if _, err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		stores[i] = s
	}
	for _, s := range stores {
		if _, err := s.Acquire(ctx); err != nil && !errors.Is(err, relay.ErrLeaseHeld) {
			t.Fatal(err)
		}
	}
	if replicas > 1 {
		for _, s := range stores {
			if err := s.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range stores {
			if _, err := s.Acquire(ctx); err != nil {
				t.Fatalf("%s takes its share: %v", s.Replica(), err)
			}
		}
	}
	if p > 1 {
		for i, s := range stores {
			parts, _ := s.Share()
			var want []int
			for k := range p {
				if holderOf(k, p, replicas) == i {
					want = append(want, k)
				}
			}
			if !slices.Equal(parts, want) {
				t.Fatalf("%s holds partitions %v of %d, want %v", s.Replica(), parts, p, want)
			}
		}
	}
	return stores
}

// rawConnsRun publishes the backlog's messages with the raw publisher on
// `conns` connections of one confirm-mode channel each, window 1000 each
// as each replica has, to the shared drains' queues: connection c sends the
// aggregates of the partitions replica c holds in the shared drain, so
// both split the messages alike.
func rawConnsRun(conns int, cpu *cpuMeter) run {
	return run{fmt.Sprintf("raw-%dconn-%dq", conns, sharedQueues), func(t *testing.T) result {
		r := newRigQueues(t, classic, sharedQueues)
		ids := make([][]int, conns)
		for i := range backlogRows {
			c := holderOf(partOf(i, sharedParts), sharedParts, conns)
			ids[c] = append(ids[c], i)
		}
		chs := make([]*amqp.Channel, conns)
		for c := range chs {
			conn := r.vhost.Dial(t)
			defer conn.Close()
			chs[c] = confirmChannel(t, conn)
		}
		res := r.publishLanes(t, chs, ids, window, cpu)
		r.checkCount(t, backlogRows)
		return res
	}}
}

// relaySharedRun drains the backlog with `replicas` relays sharing the
// table in sharedParts partitions.
func relaySharedRun(replicas int, cpu *cpuMeter) run {
	return run{fmt.Sprintf("relay-%dreplicas-p%d-%dq", replicas, sharedParts, sharedQueues), func(t *testing.T) result {
		return relayShareDrain(t, newRigQueues(t, classic, sharedQueues), backlogRows, replicas, sharedParts, cpu)
	}}
}

// relayShareDrain runs `replicas` relays in this process on a backlog of n
// rows in p partitions, each with its own store, broker connection (one
// channel, window 1000) and name, their shares placed beforehand
// (openShares). Their reads find nothing until every one leads again in
// its Run (taking its name's partitions back, after the store's quiet
// period); then they are woken, and the drain is timed until the rows they
// recorded add up to n. It then checks the queues as relayDrain does, and
// that no share changed hands during the drain.
func relayShareDrain(t *testing.T, r *rig, n, replicas, p int, cpu *cpuMeter) result {
	t.Helper()
	r.fill(t, n)
	stores := openShares(t, r, p, replicas)
	open, led, done := make(chan struct{}), make(chan struct{}, replicas), make(chan struct{})
	var total atomic.Int64
	published := make([]atomic.Int64, replicas)
	leading := make([]atomic.Bool, replicas) // led once
	timed := make([]*timedStore, replicas)
	watches := make([]*windowWatch, replicas)
	wakes := make([]chan struct{}, replicas)
	relays := make([]*relay.Relay, replicas)
	takes := make([]int64, replicas)
	held := make([][]int, replicas)
	for i, store := range stores {
		broker, err := rabbitmq.New(rabbitmq.Config{URLs: []string{r.vhost.URL}, Channels: 1, Window: window})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = broker.Close() }()
		timed[i], watches[i], wakes[i] = &timedStore{Store: store}, &windowWatch{}, make(chan struct{}, 1)
		held[i], takes[i] = store.Share()
		relays[i], err = relay.New(relay.Config{BatchSize: batchSize, Observer: watches[i], Wake: wakes[i], Hooks: relay.Hooks{
			Leading: func() {
				if !leading[i].Swap(true) {
					led <- struct{}{}
				}
			},
			Recorded: func(_ relay.Position, rows int) {
				published[i].Add(int64(rows))
				if total.Add(int64(rows)) == int64(n) {
					close(done)
				}
			},
			RoundFailed: func(err error) { t.Errorf("%s: relay round failed: %v", store.Replica(), err) },
		}}, &gatedStore{timedStore: timed[i], open: open}, broker)
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, replicas)
	for _, rl := range relays {
		go func() { errc <- rl.Run(ctx) }()
	}
	for range relays {
		select {
		case <-led:
		case err := <-errc:
			t.Fatalf("a relay stopped before leading: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("the relays did not all lead within a minute")
		}
	}
	cpu0 := cpu.read()
	begin := time.Now()
	close(open)
	for _, w := range wakes {
		w <- struct{}{}
	}
	select {
	case <-done:
	case err := <-errc:
		t.Fatalf("a relay stopped before draining: %v", err)
	case <-time.After(10 * time.Minute):
		t.Fatalf("the relays did not record all %d rows in 10 minutes (%d recorded)", n, total.Load())
	}
	elapsed := time.Since(begin)
	used := cpu.read().sub(cpu0)
	cancel()
	for range relays {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := total.Load(); got != int64(n) {
		t.Fatalf("the relays recorded %d rows, want %d", got, n)
	}
	r.checkDelivered(t, n)
	var each []string
	for i, s := range stores {
		// One take in Run's Acquire, of the share it held: more means a
		// hand-over during the drain.
		if _, took := s.Share(); took-takes[i] != 1 {
			t.Errorf("%s took a share %d times during the drain: its share changed hands", s.Replica(), took-takes[i])
		}
		each = append(each, fmt.Sprintf("%s %d rows (partitions %v; %d reads %s, %d position writes %s; %.0f in flight)", s.Replica(), published[i].Load(), held[i],
			timed[i].reads, timed[i].read.Round(time.Millisecond), timed[i].records, timed[i].record.Round(time.Millisecond), watches[i].mean()))
	}
	progress("   relays: %s", strings.Join(each, ", "))
	return result{rate: float64(n) / elapsed.Seconds(), cpu: used}
}

// gatedStore finds nothing to read until open is closed: the relays of a
// shared drain start publishing together, once each has taken its share.
type gatedStore struct {
	*timedStore
	open <-chan struct{}
}

func (s *gatedStore) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	select {
	case <-s.open:
		return s.timedStore.Read(ctx, after, b)
	default:
		return nil, nil
	}
}

// readShareRun reads the backlog with `replicas` stores sharing it in p
// partitions (one replica: it holds them all; p = 1: not partitioned),
// each reading its share readRepeats times with readAll, one after the
// other. The rate is rows read per second of reading, the CPU that of all
// the reads, per read of the backlog.
func readShareRun(p, replicas int, cpu *cpuMeter) run {
	return run{fmt.Sprintf("read-p%d-%dreplicas", p, replicas), func(t *testing.T) result {
		r := newRig(t, "")
		r.fill(t, backlogRows)
		stores := openShares(t, r, p, replicas)
		seen := make([]int, backlogRows+1) // by row id: how many readers read it
		cpu0 := cpu.read()
		begin := time.Now()
		for rep := range readRepeats {
			for i, s := range stores {
				for _, row := range readAll(t, s) {
					if k := row.Aggregate().Partition(p); p > 1 && holderOf(k, p, replicas) != i {
						t.Fatalf("%s read row %d of partition %d, which it does not hold", s.Replica(), row.ID, k)
					}
					if row.ID < 1 || row.ID > backlogRows {
						t.Fatalf("%s read row %d; the backlog's ids are 1 to %d", s.Replica(), row.ID, backlogRows)
					}
					if rep == 0 {
						seen[row.ID]++
					}
				}
			}
		}
		elapsed := time.Since(begin)
		used := cpu.read().sub(cpu0)
		for id, c := range seen[1:] {
			if c != 1 {
				t.Fatalf("row %d was read by %d readers, want 1", id+1, c)
			}
		}
		per := 1 / float64(readRepeats)
		return result{rate: float64(readRepeats*backlogRows) / elapsed.Seconds(),
			cpu: cpuUse{used.broker * per, used.postgres * per, used.self * per}}
	}}
}

// measurePartitions: RELAY_PARTITIONS. (1) A 100k backlog drained by 1, 2
// and 3 relay replicas sharing its 12 partitions, against the raw
// publisher on as many connections, in the same interleaved rounds, on six
// classic queues that the broker serves in parallel. (2) What the read
// costs PostgreSQL per 100k rows with one replica holding 1, 4 or 16
// partitions, and with three replicas each reading its share of 12: each
// replica's read scans the rows of every partition and keeps its own, so
// three replicas should cost about three times one.
func measurePartitions(t *testing.T, s *suite) {
	var runs []run
	for _, n := range replicaCounts {
		runs = append(runs, rawConnsRun(n, s.cpu))
	}
	for _, n := range replicaCounts {
		runs = append(runs, relaySharedRun(n, s.cpu))
	}
	rs := interleave(t, s.mode.rounds, runs...)
	raw := func(k int) int { return k }
	rel := func(k int) int { return len(replicaCounts) + k }
	for k, n := range replicaCounts {
		base := "1 (base)"
		if k > 0 {
			base = rs.ratioText(raw(k), raw(0), "raw 1 connection")
		}
		s.add(row{what: fmt.Sprintf("partitions: raw publisher, %d connection(s) of 1 channel, window 1000 each, %d classic queues", n, sharedQueues),
			figure: perSecond(rs.median(raw(k)), "msgs/s"), ratio: base})
		s.add(row{what: fmt.Sprintf("partitions: %d relay replica(s) drain a 100k backlog, RELAY_PARTITIONS=%d, %d classic queues", n, sharedParts, sharedQueues),
			figure: perSecond(rs.median(rel(k)), "rows/s"), ratio: rs.ratioText(rel(k), raw(k), fmt.Sprintf("raw %d connection(s)", n)),
			goal: "≥ 0.9 × raw", met: yesNo(rs.ratio(rel(k), raw(k)) >= 0.9)})
	}
	s.addGrowth(rs, raw, rel)
	var cpus []string
	for k, n := range replicaCounts {
		cpus = append(cpus, fmt.Sprintf("%d: %s", n, s.cpu.describe(rs.cpu(rel(k)), backlogRows, "relays")))
	}
	s.add(row{what: fmt.Sprintf("partitions: CPU seconds per 100k rows of the shared drains, by replicas (%s)", cpuSharing()),
		figure: strings.Join(cpus, "; "),
		ratio:  ratio(rs.cpu(rel(len(replicaCounts)-1)).postgres, rs.cpu(rel(0)).postgres) + fmt.Sprintf(" 1 replica (PostgreSQL, %d replicas)", replicaCounts[len(replicaCounts)-1])})

	reads := []struct{ p, replicas int }{{1, 1}, {4, 1}, {16, 1}, {sharedParts, 3}}
	runs = nil
	for _, c := range reads {
		runs = append(runs, readShareRun(c.p, c.replicas, s.cpu))
	}
	rs = interleave(t, s.mode.rounds, runs...)
	for i, c := range reads {
		u := rs.cpu(i)
		what := fmt.Sprintf("partitions: the read's PostgreSQL CPU per 100k rows, 1 replica holding all of P=%d", c.p)
		if c.replicas > 1 {
			what = fmt.Sprintf("partitions: the read's PostgreSQL CPU per 100k rows, %d replicas each reading its share of P=%d (all of them together)", c.replicas, c.p)
		}
		r := row{what: what, figure: fmt.Sprintf("%.2f s (readers %.2f s; %s)", u.postgres, u.self, perSecond(rs.median(i), "rows/s read"))}
		if i == 0 {
			r.ratio = "1 (base)"
		} else {
			r.ratio = ratio(u.postgres, rs.cpu(0).postgres) + " P=1"
		}
		if c.replicas > 1 {
			r.goal = fmt.Sprintf("none; at most about %d × P=1 expected (each replica scans every partition's rows)", c.replicas)
		}
		s.add(r)
	}
}

// addGrowth adds the row that says whether the relays' total grows with
// the replicas where the raw publisher's grows with its connections: by
// at least a tenth over one, per round's ratio.
func (s *suite) addGrowth(rs results, raw, rel func(int) int) {
	const grows = 1.1
	var rawText, relText []string
	met, where := true, 0
	for k, n := range replicaCounts[1:] {
		k++
		rawGrowth, relGrowth := rs.ratio(raw(k), raw(0)), rs.ratio(rel(k), rel(0))
		rawText = append(rawText, fmt.Sprintf("%d: %s", n, times(rawGrowth)))
		relText = append(relText, fmt.Sprintf("%d: %s", n, times(relGrowth)))
		if rawGrowth >= grows {
			where++
			met = met && relGrowth >= grows
		}
	}
	r := row{what: "partitions: does the relays' total grow with replicas where the raw total grows with connections?",
		figure: "raw over 1 connection " + strings.Join(rawText, ", ") + "; relays over 1 replica " + strings.Join(relText, ", "),
		goal:   fmt.Sprintf("relays ≥ %.1f × 1 replica wherever raw ≥ %.1f × 1 connection", grows, grows)}
	if where > 0 {
		r.met = yesNo(met)
	} else {
		r.met = "- (the raw total does not grow: nothing to follow)"
	}
	s.add(r)
}
