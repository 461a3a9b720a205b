package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// lockWriters are the concurrent Go writers of measurement 7b.
const lockWriters = 16

// measureLockCost: measurement 7b, what the ordering lock costs a Go
// service. 16 goroutines on a pool, each transaction updating an order
// and writing its event with outbox.Write, begun either with the pool's
// Begin (no lock) or with outbox.Begin (BEGIN and outbox_lock in one round
// trip); the two alternate round by round, and each figure is the median
// of the rounds' transactions per second.
func measureLockCost(t *testing.T, s *suite) {
	r := newRig(t, "")
	ctx := context.Background()
	if _, err := r.pool.Exec(ctx, `CREATE TABLE orders (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		INSERT INTO orders (id) SELECT g FROM generate_series(1, 100000) g`); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(r.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = lockWriters
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	d := time.Duration(s.mode.writerSeconds) * time.Second / 2
	var plain, locked []float64
	for round := range s.mode.writerRounds {
		for _, lock := range []bool{false, true} {
			tps := lockRun(t, pool, lock, d)
			progress("   round%d: %s %.0f tps", round+1, map[bool]string{false: "pool.Begin", true: "outbox.Begin"}[lock], tps)
			if lock {
				locked = append(locked, tps)
			} else {
				plain = append(plain, tps)
			}
		}
	}
	p, l := median(plain), median(locked)
	s.add(row{what: fmt.Sprintf("Go writers (%d goroutines, update an order + outbox.Write), begun with pool.Begin", lockWriters),
		figure: perSecond(p, "tps"), ratio: "1 (base)"})
	s.add(row{what: "the same begun with outbox.Begin (the ordering lock in BEGIN's round trip)",
		figure: perSecond(l, "tps"), ratio: ratio(l, p) + " pool.Begin"})
}

func lockRun(t *testing.T, pool *pgxpool.Pool, lock bool, d time.Duration) float64 {
	ctx := context.Background()
	var n atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	errs := make(chan error, lockWriters)
	for range lockWriters {
		wg.Go(func() {
			for time.Now().Before(end) {
				id := 1 + rand.N(100000)
				agg := outbox.Aggregate{Type: "order", ID: strconv.Itoa(id)}
				var tx pgx.Tx
				var err error
				if lock {
					tx, err = outbox.Begin(ctx, pool, agg)
				} else {
					tx, err = pool.Begin(ctx)
				}
				if err == nil {
					_, err = tx.Exec(ctx, `UPDATE orders SET n = n + 1 WHERE id = $1`, id)
				}
				if err == nil {
					err = outbox.Write(ctx, tx, outbox.Event{AggregateType: agg.Type, AggregateID: agg.ID,
						EventType: "OrderChanged", RoutingKey: queueName, Payload: payload})
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return float64(n.Load()) / d.Seconds()
}
