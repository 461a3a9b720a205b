package main

import (
	"context"
	"time"

	"github.com/outboxrelay/outboxrelay/relay/metrics"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

// The sampler lives here, not in relay/postgres or relay/metrics: it joins
// the two, and adapters do not know about each other.

// sampleEvery is how often the relay reads the outbox's state (pending,
// parked and dead rows, lag, hold-ups) for the metrics and readiness.
const sampleEvery = 5 * time.Second

// samplerConfig configures a sampler.
type samplerConfig struct {
	// Interval is the time between samples, and bounds each read. Zero
	// means sampleEvery.
	Interval time.Duration
	// Unrecorded, set for the logical source, counts the rows this
	// replica received and has not recorded (postgres.Store.Unrecorded).
	Unrecorded func() (int, time.Time)
}

// sampler reads the outbox's state (pending, parked and dead rows, lag,
// hold-ups) into the metrics, for /metrics and /readyz.
type sampler struct {
	admin   *postgres.Admin
	metrics *metrics.Metrics
	cfg     samplerConfig
}

func newSampler(a *postgres.Admin, m *metrics.Metrics, cfg samplerConfig) *sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = sampleEvery
	}
	return &sampler{admin: a, metrics: m, cfg: cfg}
}

// Run samples at once, then every interval, until ctx ends.
func (s *sampler) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		sample := s.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.metrics.Observe(sample) // nil when the database could not be read
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runOnce reads the outbox's state, or returns nil if it cannot.
func (s *sampler) runOnce(ctx context.Context) *metrics.Sample {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Interval)
	defer cancel()
	st, err := s.admin.Status(ctx)
	if err != nil {
		return nil
	}
	x, err := s.admin.HeldBack(ctx)
	if err != nil {
		return nil
	}
	sample := &metrics.Sample{Pending: st.Pending, Parked: st.Parked, Dead: st.Dead,
		OldestPendingAgeSeconds: st.OldestPendingAgeSeconds}
	for _, p := range st.Partitions {
		ps := metrics.PartitionSample{Partition: p.Partition, Pending: p.Pending, OldestPendingAgeSeconds: p.OldestPendingAgeSeconds}
		if p.LeaseRemainingSeconds > 0 {
			ps.Holder = p.Holder
		}
		sample.Partitions = append(sample.Partitions, ps)
	}
	if x != nil {
		sample.HoldupAgeSeconds = x.AgeSeconds
	}
	if s.cfg.Unrecorded != nil {
		// The logical source: the table cannot tell which rows after the
		// (txid, id) position are published (they come in commit order),
		// and an open transaction holds nothing back. Pending is what
		// this replica received and has not recorded; the slot's size
		// tells what waits in it.
		n, oldest := s.cfg.Unrecorded()
		sample.Pending, sample.OldestPendingAgeSeconds, sample.HoldupAgeSeconds = int64(n), 0, 0
		if n > 0 {
			sample.OldestPendingAgeSeconds = max(0, time.Since(oldest).Seconds())
		}
		if st.Slot != nil {
			sample.SlotRetainedWALBytes = st.Slot.RetainedWALBytes
		}
	}
	return sample
}
