package ledger

import (
	"context"
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
	return writeUntilDone(ctx, w.Outages, w.one)
}

func (w *Contended) one(ctx context.Context) error {
	agg := w.Aggregates[rand.N(len(w.Aggregates))]
	k := 1 + rand.N(3)
	tx, err := begin(ctx, w.Pool, w.Ledger, "contended")
	if err != nil {
		return err
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
	for i := range k {
		if err := tx.insert(ctx, "Contended", w.RoutingKey, Payload{Agg: agg, Seq: version - k + i}); err != nil {
			return err
		}
	}
	_, err = tx.finish(ctx, w.Pause, w.Rollback, w.Outages)
	return err
}
