package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Config configures a Store, and an Admin opened on its own (OpenAdmin),
// which uses only URL, Table and MaxConns.
type Config struct {
	// URL is a PostgreSQL URL or keyword/value DSN in pgx syntax.
	URL string
	// Table is the outbox table; its schema also holds
	// outbox_relay_position.
	Table Table
	// MaxConns caps the pool. Zero means 4.
	MaxConns int32
	// Replica names this replica in the lease and in status
	// (RELAY_REPLICA_NAME). Empty means the host name and six random hex
	// digits, unique to this process. A name is held by one live process at
	// a time (see identity.go): a second process with the same name does
	// not lead while the first runs.
	Replica string
	// LeaseTimeout is how long a lease lasts without renewal. Zero means
	// relay.DefaultLeaseTimeout.
	LeaseTimeout time.Duration
	// Logger is told, at Start, when the table's ordering locks cannot be
	// checked. Nil discards.
	Logger *slog.Logger
	// Source is where the Store reads rows: SourcePoll (also the zero
	// value) or SourceLogical.
	Source Source
	// Slot and Publication name the logical source's replication slot and
	// publication. Empty means the defaults (DefaultSlot,
	// DefaultPublication).
	Slot, Publication string
	// Partitions is how many partitions the table's aggregates are hashed
	// into, shared among the live replicas (partition.go). Zero or one
	// means one replica publishes the whole table. The poll source only.
	Partitions int
}

// MaxPartitions bounds Config.Partitions.
const MaxPartitions = 1024

// Source is where the Store reads rows from.
type Source string

const (
	// SourcePoll reads the table by transaction id, below the oldest
	// running transaction; it needs nothing of the server.
	SourcePoll Source = "poll"
	// SourceLogical reads the table's inserts from a replication slot
	// through logical decoding, in commit order; it needs wal_level =
	// logical, a publication and a slot (Migrate with SourceLogical).
	SourceLogical Source = "logical"
)

// Validate reports the first field that cannot work.
func (c Config) Validate() error {
	if c.URL == "" {
		return &relay.ConfigError{Field: "URL", Problem: "is required"}
	}
	if err := CheckURL(c.URL); err != nil {
		return &relay.ConfigError{Field: "URL", Problem: err.Error()}
	}
	if _, err := pgxpool.ParseConfig(c.URL); err != nil {
		return &relay.ConfigError{Field: "URL", Problem: "cannot be parsed: " + redactParseError(err)}
	}
	if len(c.Replica) > maxReplicaName {
		return &relay.ConfigError{Field: "Replica", Problem: fmt.Sprintf("must be at most %d bytes, got %d", maxReplicaName, len(c.Replica))}
	}
	if _, err := ParseTable(c.Table.String()); err != nil {
		return &relay.ConfigError{Field: "Table", Problem: err.Error()}
	}
	if c.MaxConns < 0 {
		return &relay.ConfigError{Field: "MaxConns", Problem: "must not be negative"}
	}
	if c.LeaseTimeout < 0 {
		return &relay.ConfigError{Field: "LeaseTimeout", Problem: "must not be negative"}
	}
	switch c.Source {
	case "", SourcePoll, SourceLogical:
	default:
		return &relay.ConfigError{Field: "Source", Problem: fmt.Sprintf("must be %s or %s, got %q", SourcePoll, SourceLogical, c.Source)}
	}
	if c.Slot != "" && !validSlot(c.Slot) {
		return &relay.ConfigError{Field: "Slot", Problem: fmt.Sprintf("must be 1 to %d lower-case letters, digits and underscores, got %q", maxIdentifier, c.Slot)}
	}
	if c.Partitions < 0 || c.Partitions > MaxPartitions {
		return &relay.ConfigError{Field: "Partitions", Problem: fmt.Sprintf("must be from 1 to %d, got %d", MaxPartitions, c.Partitions)}
	}
	if c.Partitions > 1 && c.Source == SourceLogical {
		return &relay.ConfigError{Field: "Partitions", Problem: "cannot be more than 1 with the logical source: a replication slot has one reader, " +
			"so replicas cannot share it, and a slot per replica would decode every commit once per replica; use the poll source to share the work"}
	}
	if len(c.Publication) > maxIdentifier {
		return &relay.ConfigError{Field: "Publication", Problem: fmt.Sprintf("must be at most %d bytes, got %d", maxIdentifier, len(c.Publication))}
	}
	return nil
}

// maxReplicaName bounds a replica's name, which status prints and the
// lease row stores.
const maxReplicaName = 200

// newPool validates cfg and creates the pool it describes. The pool
// connects lazily and reconnects by itself.
func newPool(cfg Config) (*pgxpool.Pool, *pgxpool.Config, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case cfg.MaxConns > 0:
		pc.MaxConns = cfg.MaxConns
	case !strings.Contains(cfg.URL, "pool_max_conns"):
		pc.MaxConns = 4 // reads, position writes and status need few
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "outbox-relay"
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, nil, fmt.Errorf("create pool: %w", err)
	}
	return pool, pc, nil
}
