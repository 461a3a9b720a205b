package postgres

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Admin is the operator's side of the adapter: the outbox's status, its
// dead rows (list, retry, drop), the hold-up probe and the reads of a
// replay. Unlike a Store it holds no lease and no replica name, so any
// number of them may run beside the relay; its only writes are retry and
// drop, which flag dead rows for the leader to act on.
type Admin struct {
	pool  *pgxpool.Pool
	table Table
	q     adminQueries
	owned bool // Close closes the pool
	// slot names the logical source's slot, for status; empty for the
	// poll source, or the default name.
	logical bool
	slot    string
}

// OpenAdmin returns an Admin with a pool of its own, for the one-shot
// commands (status, dead, replay). It uses cfg's URL, Table and MaxConns,
// and validates cfg as Open does. It does not connect yet.
func OpenAdmin(cfg Config) (*Admin, error) {
	pool, _, err := newPool(cfg)
	if err != nil {
		return nil, err
	}
	return &Admin{pool: pool, table: cfg.Table, q: newAdminQueries(cfg.Table), owned: true,
		logical: cfg.Source == SourceLogical, slot: cfg.Slot}, nil
}

// Admin returns an Admin of the store's table on the store's pool, for the
// services that run beside the relay (the hold-up watcher, the metrics
// sampler). It is valid until the store is closed; its Close does nothing.
func (s *Store) Admin() *Admin {
	return &Admin{pool: s.pool, table: s.table, q: newAdminQueries(s.table), logical: s.source == SourceLogical, slot: s.slot}
}

// Close closes the pool of an Admin from OpenAdmin.
func (a *Admin) Close() {
	if a.owned {
		a.pool.Close()
	}
}

// resolve names the table as schema.name, checking that it exists and has
// the relay's columns.
func (a *Admin) resolve(ctx context.Context) (string, error) {
	key, _, err := resolveTable(ctx, a.pool, a.table)
	return key, err
}
