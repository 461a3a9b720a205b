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

// ContendedSchema creates the business tables of Contended writers: one
// row per aggregate whose version counts the aggregate's events, and a
// business row per transaction.
const ContendedSchema = `
CREATE TABLE IF NOT EXISTS ledger_aggregates (id text PRIMARY KEY, version bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ledger_business (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aggregate text NOT NULL, version bigint NOT NULL);`

// Contended is one writer connection of many that share a few hot
// aggregates, as concurrent requests to one service do. Each transaction
// bumps its aggregate's version by the number of events it writes
// (UPDATE ... RETURNING, the row lock held to COMMIT), inserts a business
// row and 1 to 3 outbox rows numbered by the version, waits up to Pause
// and commits; some roll back. The versions are the commit order of the
// aggregate, so the ledger checks that first deliveries follow it.
//
// With Lock set, every transaction first takes the aggregate's ordering
// lock (outbox_lock), as docs/design.md (Ordering) asks; without it, it follows only the
// row lock, which does not order transaction ids by commit.
type Contended struct {
	Pool       *pgxpool.Pool
	Ledger     *Ledger
	Aggregates []string      // ids of the hot aggregates, shared by all writers
	RoutingKey string        // default "events"
	Rollback   float64       // fraction of transactions rolled back
	Pause      time.Duration // upper bound of the random pause before COMMIT
	Lock       bool          // take outbox_lock first
	// Outages makes the writer ride out database outages, as Writer's
	// does.
	Outages bool
}

// Setup creates the business tables and the aggregates' rows.
func (w *Contended) Setup(ctx context.Context) error {
	if _, err := w.Pool.Exec(ctx, ContendedSchema); err != nil {
		return fmt.Errorf("contended: create tables: %w", err)
	}
	for _, a := range w.Aggregates {
		if _, err := w.Pool.Exec(ctx, `INSERT INTO ledger_aggregates (id) VALUES ($1) ON CONFLICT DO NOTHING`, a); err != nil {
			return fmt.Errorf("contended: create aggregate %s: %w", a, err)
		}
	}
	return nil
}

// Run writes until ctx ends. Errors caused by ctx ending are not reported.
func (w *Contended) Run(ctx context.Context) error {
	if w.RoutingKey == "" {
		w.RoutingKey = "events"
	}
	for ctx.Err() == nil {
		err := w.one(ctx)
		switch {
		case err == nil || ctx.Err() != nil:
		case w.Outages && !errors.Is(err, errUndecided):
			time.Sleep(20 * time.Millisecond)
		default:
			return err
		}
	}
	return nil
}

func (w *Contended) one(ctx context.Context) error {
	agg := w.Aggregates[rand.N(len(w.Aggregates))]
	k := 1 + rand.N(3)
	tx, err := w.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("contended: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if w.Lock {
		if _, err := tx.Exec(ctx, `SELECT outbox_lock('ledger', $1)`, agg); err != nil {
			return fmt.Errorf("contended: lock: %w", err)
		}
	}
	var version int
	if err := tx.QueryRow(ctx, `UPDATE ledger_aggregates SET version = version + $2 WHERE id = $1 RETURNING version`,
		agg, k).Scan(&version); err != nil {
		return fmt.Errorf("contended: bump version: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ledger_business (aggregate, version) VALUES ($1, $2)`, agg, version); err != nil {
		return fmt.Errorf("contended: business row: %w", err)
	}
	type written struct {
		id string
		p  Payload
	}
	batch := make([]written, 0, k)
	for i := range k {
		p := Payload{Agg: agg, Seq: version - k + i}
		body, _ := json.Marshal(p)
		var id string
		if err := tx.QueryRow(ctx, `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('ledger', $1, 'Contended', $2, $3) RETURNING event_id::text`, agg, w.RoutingKey, body).Scan(&id); err != nil {
			return fmt.Errorf("contended: insert: %w", err)
		}
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
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		if !w.Outages {
			return fmt.Errorf("contended: commit (outcome unknown): %w", err)
		}
		ids := make([]string, len(batch))
		for i, e := range batch {
			ids[i] = e.id
		}
		committed, lerr := lookUp(ctx, w.Pool, "contended", ids)
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
	return nil
}
