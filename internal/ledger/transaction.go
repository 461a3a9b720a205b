package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// writeUntilDone runs one transaction after another until ctx ends. Errors
// caused by ctx ending are not reported. With outages, a failed transaction
// is tried again after a moment, unless its outcome could not be decided.
func writeUntilDone(ctx context.Context, outages bool, one func(context.Context) error) error {
	for ctx.Err() == nil {
		err := one(ctx)
		switch {
		case err == nil || ctx.Err() != nil:
		case outages && !errors.Is(err, errUndecided):
			time.Sleep(20 * time.Millisecond) // the database is away; try again
		default:
			return err
		}
	}
	return nil
}

// written is an event a transaction inserted, recorded in the ledger once
// the transaction's outcome is known.
type written struct {
	id string
	p  Payload
}

// txn is a writer's transaction in progress and the events it inserted.
type txn struct {
	pgx.Tx
	pool   *pgxpool.Pool
	ledger *Ledger
	who    string // the writer, in errors: "writer a", "contended"
	events []written
}

// begin starts a transaction whose events go to l.
func begin(ctx context.Context, pool *pgxpool.Pool, l *Ledger, who string) (*txn, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: begin: %w", who, err)
	}
	return &txn{Tx: tx, pool: pool, ledger: l, who: who}, nil
}

// insert writes the outbox row of p, an event of type eventType.
func (t *txn) insert(ctx context.Context, eventType, routingKey string, p Payload) error {
	body, _ := json.Marshal(p)
	var id string
	if err := t.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('ledger', $1, $2, $3, $4) RETURNING event_id::text`, p.Agg, eventType, routingKey, body).Scan(&id); err != nil {
		return fmt.Errorf("%s: insert: %w", t.who, err)
	}
	t.events = append(t.events, written{id, p})
	return nil
}

// finish waits up to pause, then rolls the transaction back with
// probability rollback, or else commits it, and records its events'
// outcome in the ledger. It reports whether the transaction committed.
//
// With outages, a commit whose outcome is unknown is looked up once the
// database is back; without, it is an error.
func (t *txn) finish(ctx context.Context, pause time.Duration, rollback float64, outages bool) (bool, error) {
	if pause > 0 {
		time.Sleep(time.Duration(rand.N(int64(pause))))
	}
	if rand.Float64() < rollback {
		t.rolledBack()
		return false, t.Rollback(ctx)
	}
	// Commit even if ctx ends now: an interrupted commit has an unknown
	// outcome, which the ledger cannot record.
	if err := t.Commit(context.WithoutCancel(ctx)); err != nil {
		if !outages {
			return false, fmt.Errorf("%s: commit (outcome unknown): %w", t.who, err)
		}
		ids := make([]string, len(t.events))
		for i, e := range t.events {
			ids[i] = e.id
		}
		committed, err := lookUp(ctx, t.pool, t.who, ids)
		if err != nil {
			return false, err
		}
		if !committed {
			t.rolledBack()
			return false, nil
		}
	}
	for _, e := range t.events {
		t.ledger.Committed(e.id, e.p)
	}
	return true, nil
}

func (t *txn) rolledBack() {
	for range t.events {
		t.ledger.RolledBack()
	}
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
