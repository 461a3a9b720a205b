package ledger

import (
	"context"
	"encoding/json"
	"errors"
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
	for ctx.Err() == nil {
		err := w.one(ctx)
		switch {
		case err == nil || ctx.Err() != nil:
		case w.Outages && !errors.Is(err, errUndecided):
			time.Sleep(20 * time.Millisecond) // the database is away; try again
		default:
			return err
		}
	}
	return nil
}

// one writes one transaction.
func (w *Writer) one(ctx context.Context) error {
	tx, err := w.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("writer %s: begin: %w", w.Name, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	type written struct {
		id string
		p  Payload
	}
	var batch []written
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
		p := Payload{Agg: agg, Seq: next[agg]}
		body, _ := json.Marshal(p)
		var id string
		if err := tx.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('ledger', $1, 'Tested', $2, $3) RETURNING event_id::text`, agg, w.RoutingKey, body).Scan(&id); err != nil {
			return fmt.Errorf("writer %s: insert: %w", w.Name, err)
		}
		next[agg]++
		batch = append(batch, written{id, p})
	}
	if w.Pause > 0 {
		time.Sleep(time.Duration(rand.N(int64(w.Pause))))
	}
	if rand.Float64() < w.Rollback {
		for range batch {
			w.Ledger.RolledBack()
		}
		return tx.Rollback(ctx)
	}
	// Commit even if ctx ends now: an interrupted commit has an unknown
	// outcome, which the ledger cannot record.
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		if !w.Outages {
			return fmt.Errorf("writer %s: commit (outcome unknown): %w", w.Name, err)
		}
		ids := make([]string, len(batch))
		for i, e := range batch {
			ids[i] = e.id
		}
		committed, lerr := lookUp(ctx, w.Pool, "writer "+w.Name, ids)
		if lerr != nil {
			return lerr
		}
		if !committed {
			for range batch {
				w.Ledger.RolledBack()
			}
			return nil
		}
	}
	for _, e := range batch {
		w.Ledger.Committed(e.id, e.p)
	}
	for agg, n := range next {
		w.seq[agg] = n
	}
	return nil
}

// errUndecided stops even an Outages writer: without a commit's outcome
// the ledger cannot be trusted.
var errUndecided = errors.New("commit outcome cannot be decided")

// lookUp decides a commit whose outcome is unknown by looking for its events
// once the database answers again. One answer is not enough: right after a
// crash the dying server may still answer, from before the commit record it
// already wrote became visible. So the answer must hold twice, half a second
// apart, from the same server incarnation (same postmaster start time).
func lookUp(ctx context.Context, pool *pgxpool.Pool, who string, ids []string) (bool, error) {
	ctx = context.WithoutCancel(ctx)
	deadline := time.Now().Add(2 * time.Minute)
	type answer struct {
		n     int
		start time.Time
	}
	var last *answer
	for {
		var a answer
		err := pool.QueryRow(ctx, `SELECT count(*), pg_postmaster_start_time() FROM outbox WHERE event_id::text = ANY($1)`, ids).Scan(&a.n, &a.start)
		same := err == nil && last != nil && last.n == a.n && last.start.Equal(a.start)
		switch {
		case same && a.n == len(ids):
			return true, nil
		case same && a.n == 0:
			return false, nil
		case err == nil && a.n != 0 && a.n != len(ids):
			return false, fmt.Errorf("%s: %w: %d of %d events of one transaction exist", who, errUndecided, a.n, len(ids))
		case err == nil:
			last = &a
		case time.Now().After(deadline):
			return false, fmt.Errorf("%s: %w: %w", who, errUndecided, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
