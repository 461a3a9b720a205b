// Package metrics exports the relay's state as Prometheus metrics and
// answers its health and readiness checks. Metrics implements
// relay.Observer for what the relay loop does; the state of the outbox
// (pending, parked and dead rows, lag, hold-ups) is sampled from the
// database by the caller and handed over with Observe.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outboxrelay/outboxrelay/relay"
)

const namespace = "outbox_relay"

// Metrics is the relay's metrics and health state. Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	published        prometheus.Counter
	failures         *prometheus.CounterVec
	confirmLatency   prometheus.Histogram
	batchSize        prometheus.Histogram
	leader           prometheus.Gauge
	blocked          prometheus.Gauge
	databaseUp       prometheus.Gauge
	pending          prometheus.Gauge
	oldestPendingAge prometheus.Gauge
	parked           prometheus.Gauge
	dead             prometheus.Gauge
	holdupAge        prometheus.Gauge
	slotWAL          prometheus.Gauge
	retentionDeleted prometheus.Counter
	unlocked         prometheus.Counter
	skipped          prometheus.Counter
	// A table whose work replicas share (RELAY_PARTITIONS): each
	// partition's holder and lag, as sampled.
	partitionHeld    *prometheus.GaugeVec
	partitionPending *prometheus.GaugeVec
	partitionAge     *prometheus.GaugeVec
	f                promauto.Factory

	health
}

// New registers the metrics. brokerUp reports whether this replica has a
// connection to the broker; nil means never.
func New(brokerUp func() bool) *Metrics {
	if brokerUp == nil {
		brokerUp = func() bool { return false }
	}
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.health.brokerUp = brokerUp
	m.lastAlive.Store(time.Now().UnixNano())

	// Every metric of the relay is named outbox_relay_*.
	f := promauto.With(prometheus.WrapRegistererWithPrefix(namespace+"_", m.reg))
	gauge := func(name, help string) prometheus.Gauge {
		return f.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m.published = f.NewCounter(prometheus.CounterOpts{Name: "rows_published_total",
		Help: "Rows confirmed by the broker and recorded as published."})
	m.failures = f.NewCounterVec(prometheus.CounterOpts{Name: "publish_failures_total",
		Help: "Publishing failures by reason: rejected (the broker refused a row), invalid (a row cannot become a message), " +
			"broker (connection or channel failed), database (read, record or lease renewal failed), lease (the lease was lost)."},
		[]string{"reason"})
	for _, r := range []relay.Failure{relay.FailureRejected, relay.FailureInvalid, relay.FailureBroker,
		relay.FailureDatabase, relay.FailureLease} {
		m.failures.WithLabelValues(string(r)) // export zeros, so rates work from the start
	}
	m.confirmLatency = f.NewHistogram(prometheus.HistogramOpts{Name: "confirm_latency_seconds",
		Help:    "Time from publishing a batch to its confirm being recorded.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}) // 0.5 ms to 16 s
	m.batchSize = f.NewHistogram(prometheus.HistogramOpts{Name: "batch_size", Help: "Messages per publish call.",
		Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}})
	m.leader = gauge("leader", "1 while this replica holds the lease and publishes, else 0.")
	m.blocked = gauge("broker_blocked", "1 while the broker blocks publishers (a resource alarm), else 0.")
	m.databaseUp = gauge("database_up", "1 if the last sample of the outbox's state succeeded, else 0.")
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "broker_up",
		Help: "1 while this replica has an open connection to the broker (standbys have none), else 0."},
		func() float64 { return b2f(brokerUp()) })
	m.pending = gauge("pending_rows", "Committed rows after the recorded position, not yet published.")
	m.oldestPendingAge = gauge("oldest_pending_age_seconds",
		"Age of the oldest pending row: how far publishing lags behind the writers. 0 when none is pending.")
	m.parked = gauge("parked_rows", "Rows the broker rejected that wait for a retry (not yet dead).")
	m.dead = gauge("dead_rows", "Rows that failed every attempt; their aggregates wait (see outbox-relay dead).")
	m.holdupAge = gauge("holdup_age_seconds",
		"Age of the oldest transaction holding committed rows back from publishing; 0 when none does.")
	m.slotWAL = gauge("slot_retained_wal_bytes",
		"WAL the server keeps for the logical source's replication slot (RELAY_SOURCE=logical): what a relay that is down or behind costs the server's disk. 0 for the poll source.")
	m.retentionDeleted = f.NewCounter(prometheus.CounterOpts{Name: "retention_deleted_rows_total",
		Help: "Published rows deleted by retention."})
	m.unlocked = f.NewCounter(prometheus.CounterOpts{Name: "unlocked_rows_total",
		Help: "Rows published whose transaction did not take their aggregate's ordering lock (outbox_lock) before its first write: " +
			"their order among concurrent writers of the aggregate is not guaranteed."})
	m.skipped = f.NewCounter(prometheus.CounterOpts{Name: "skipped_rows_total",
		Help: "Rows that died under RELAY_DEAD_ROWS=skip: their aggregates went on without them " +
			"(the next message of each names them in its outbox_skipped header)."})
	m.partitionHeld = f.NewGaugeVec(prometheus.GaugeOpts{Name: "partition_held",
		Help: "RELAY_PARTITIONS > 1: 1 for each partition and the replica holding its lease, 0 with holder \"\" for a partition no replica holds."},
		[]string{"partition", "holder"})
	m.partitionPending = f.NewGaugeVec(prometheus.GaugeOpts{Name: "partition_pending_rows",
		Help: "RELAY_PARTITIONS > 1: committed rows of each partition after its position."}, []string{"partition"})
	m.partitionAge = f.NewGaugeVec(prometheus.GaugeOpts{Name: "partition_oldest_pending_age_seconds",
		Help: "RELAY_PARTITIONS > 1: age of each partition's oldest pending row; 0 when none is pending."}, []string{"partition"})
	m.f = f
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Sample is the outbox's state, as read from the database.
type Sample struct {
	Pending, Parked, Dead   int64
	OldestPendingAgeSeconds float64
	HoldupAgeSeconds        float64 // 0 when no transaction holds rows back
	SlotRetainedWALBytes    int64   // the logical source's slot; 0 without one
	// Partitions, for a table whose work replicas share; nil otherwise.
	Partitions []PartitionSample
}

// PartitionSample is one partition's state, as read from the database.
type PartitionSample struct {
	Partition               int
	Holder                  string // empty when no replica holds its lease
	Pending                 int64
	OldestPendingAgeSeconds float64
}

// Observe records a sample of the outbox's state; a nil sample means the
// database could not be read.
func (m *Metrics) Observe(s *Sample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sampled = true
	if s == nil {
		m.databaseUp.Set(0)
		m.dbUp = false
		return
	}
	m.databaseUp.Set(1)
	m.dbUp = true
	m.sample = *s
	m.pending.Set(float64(s.Pending))
	m.oldestPendingAge.Set(s.OldestPendingAgeSeconds)
	m.parked.Set(float64(s.Parked))
	m.dead.Set(float64(s.Dead))
	m.holdupAge.Set(s.HoldupAgeSeconds)
	m.slotWAL.Set(float64(s.SlotRetainedWALBytes))
	m.partitionHeld.Reset() // holders change: no stale pairs
	for _, p := range s.Partitions {
		k := strconv.Itoa(p.Partition)
		m.partitionHeld.WithLabelValues(k, p.Holder).Set(b2f(p.Holder != ""))
		m.partitionPending.WithLabelValues(k).Set(float64(p.Pending))
		m.partitionAge.WithLabelValues(k).Set(p.OldestPendingAgeSeconds)
	}
}

// Share exports this replica's share of a table whose work replicas
// share: how many partitions it holds, and how many times it took a share
// (at its start, and after every hand-over).
func (m *Metrics) Share(share func() (held int, takes int64)) {
	m.f.NewGaugeFunc(prometheus.GaugeOpts{Name: "partitions_held",
		Help: "RELAY_PARTITIONS > 1: partitions this replica holds and publishes."},
		func() float64 { h, _ := share(); return float64(h) })
	m.f.NewCounterFunc(prometheus.CounterOpts{Name: "partition_takes_total",
		Help: "RELAY_PARTITIONS > 1: times this replica took its share of the partitions: at its start, and after each hand-over (a replica joined or left)."},
		func() float64 { _, t := share(); return float64(t) })
}

// RetentionDeleted counts rows deleted by retention.
func (m *Metrics) RetentionDeleted(n int) { m.retentionDeleted.Add(float64(n)) }

// The relay.Observer methods.

// Alive records a turn of the relay's loop.
func (m *Metrics) Alive() { m.lastAlive.Store(time.Now().UnixNano()) }

// Leading records whether this replica leads.
func (m *Metrics) Leading(l bool) {
	m.leader.Set(b2f(l))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leading = l
	m.lastProgress = time.Now() // a new leader gets a fresh stall clock
}

// Sent records the size of one publish call.
func (m *Metrics) Sent(n int) { m.batchSize.Observe(float64(n)) }

// Confirmed records rows confirmed and recorded.
func (m *Metrics) Confirmed(n int, latency time.Duration) {
	m.published.Add(float64(n))
	if latency >= 0 {
		m.confirmLatency.Observe(latency.Seconds())
	}
	m.mu.Lock()
	m.lastProgress = time.Now()
	m.mu.Unlock()
}

// Failed counts a failure by reason.
func (m *Metrics) Failed(reason relay.Failure) { m.failures.WithLabelValues(string(reason)).Inc() }

// Blocked records whether the broker blocks publishers.
func (m *Metrics) Blocked(b bool) {
	m.blocked.Set(b2f(b))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.isBlocked = b
}

// Unlocked counts rows published without their ordering lock.
func (m *Metrics) Unlocked(n int) { m.unlocked.Add(float64(n)) }

// Skipped counts rows whose aggregates went on without them.
func (m *Metrics) Skipped(n int) { m.skipped.Add(float64(n)) }

var _ relay.Observer = (*Metrics)(nil)

// health is the state the health and readiness checks read.
type health struct {
	brokerUp  func() bool
	lastAlive atomic.Int64 // unix nanoseconds of the loop's last turn

	mu           sync.Mutex
	sampled      bool // a sample (or a failure to take one) arrived
	dbUp         bool
	sample       Sample
	leading      bool
	isBlocked    bool
	lastProgress time.Time
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
