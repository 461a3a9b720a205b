package main

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/ledger"
)

var orderDuration = flag.Duration("order.duration", 20*time.Second,
	"how long TestContendedWritersKeepCommitOrder writes")

// contend starts 16 writer connections that share 4 hot aggregates (see
// ledger.Contended) until stopWrites.
func (r *rig) contend(t *testing.T, lock, outages bool) {
	t.Helper()
	aggs := make([]string, 4)
	for i := range aggs {
		aggs[i] = fmt.Sprintf("hot-%d", i)
	}
	ctx, cancel := context.WithCancel(context.Background())
	prev := r.stopW
	r.stopW = func() {
		cancel()
		if prev != nil {
			prev()
		}
	}
	for i := range 16 {
		w := &ledger.Contended{Pool: r.pool, Ledger: r.ledger, Aggregates: aggs, Rollback: 0.05,
			Pause: 10 * time.Millisecond, Lock: lock, Outages: outages}
		if i == 0 {
			if err := w.Setup(ctx); err != nil {
				t.Fatal(err)
			}
		}
		r.wg.Go(func() {
			if err := w.Run(ctx); err != nil {
				t.Errorf("writer: %v", err)
			}
		})
	}
}

// TestContendedWritersKeepCommitOrder is the ordering guarantee under the
// writers that need it most: 16 connections change 4 hot aggregates
// concurrently, each transaction bumping its aggregate's version under
// the row lock before inserting its events, as a user following the
// README would. The relay runs with its defaults. Every event must arrive
// first in the order of the versions, which is the commit order.
func TestContendedWritersKeepCommitOrder(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := []string{"RELAY_DATABASE_URL=" + r.dbURL, "RELAY_AMQP_URL=" + r.broker.URL}
	p := start(t, env)
	r.contend(t, false, false)
	time.Sleep(*orderDuration)
	r.stopWrites()
	r.drained(t)
	stopClean(t, p)
	r.check(t, 0)
}
