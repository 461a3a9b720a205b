package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Writer commits events for its own aggregates, one transaction at a time,
// so commit order per aggregate is the order it assigns sequence numbers.
// Several Writers on one table commit concurrently and out of id order.
type Writer struct {
	Pool       *pgxpool.Pool
	Ledger     *Ledger
	Name       string        // aggregate ids are Name-0 .. Name-(Aggregates-1)
	Aggregates int           // default 4
	RoutingKey string        // default "events"
	PerTx      int           // events per transaction, default 1
	Rollback   float64       // fraction of transactions rolled back
	Pause      time.Duration // upper bound of a random pause inside each transaction
	// Outages makes the writer ride out database outages (restarts,
	// terminated backends): failed transactions are retried, and a commit
	// whose outcome is unknown is looked up once the database is back.
	Outages bool
	seq     map[string]int
}

// Run writes until ctx ends or a database error occurs; errors caused by
// ctx ending are not reported. A transaction whose commit fails with an
// unknown outcome stops the writer with an error, since the ledger could not
// tell whether it committed.
func (w *Writer) Run(ctx context.Context) error {
	if w.Aggregates == 0 {
		w.Aggregates = 4
	}
	if w.RoutingKey == "" {
		w.RoutingKey = "events"
	}
	if w.PerTx == 0 {
		w.PerTx = 1
	}
	w.seq = map[string]int{}
	return writeUntilDone(ctx, w.Outages, w.one)
}

// one writes one transaction.
func (w *Writer) one(ctx context.Context) error {
	tx, err := begin(ctx, w.Pool, w.Ledger, "writer "+w.Name)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	aggs := make([]string, w.PerTx)
	lock := make([]string, 0, 2*w.PerTx)
	for i := range aggs {
		aggs[i] = fmt.Sprintf("%s-%d", w.Name, rand.N(w.Aggregates))
		lock = append(lock, "ledger", aggs[i])
	}
	// The ordering lock first, as docs/design.md (Ordering) asks of writers (a Writer's
	// own transactions do not overlap, so its order holds either way).
	if _, err := tx.Exec(ctx, `SELECT outbox_lock(VARIADIC $1::text[])`, lock); err != nil {
		return fmt.Errorf("writer %s: lock: %w", w.Name, err)
	}
	next := map[string]int{}
	for _, agg := range aggs {
		if _, ok := next[agg]; !ok {
			next[agg] = w.seq[agg]
		}
		if err := tx.insert(ctx, "Tested", w.RoutingKey, Payload{Agg: agg, Seq: next[agg]}); err != nil {
			return err
		}
		next[agg]++
	}
	committed, err := tx.finish(ctx, w.Pause, w.Rollback, w.Outages)
	if committed {
		for agg, n := range next {
			w.seq[agg] = n
		}
	}
	return err
}
