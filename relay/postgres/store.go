package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Config configures a Store.
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
}

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
	return nil
}

// maxReplicaName bounds a replica's name, which status prints and the
// lease row stores.
const maxReplicaName = 200

// callTimeout bounds each read and position write, so a connection that
// went silent (a half-open TCP connection) fails the call instead of
// stalling the relay until the kernel gives up on it.
const callTimeout = 30 * time.Second

// Store reads an outbox table and records the relay's position in
// PostgreSQL. It implements relay.Store. Its pool connects lazily and
// reconnects by itself, so a database that is down only fails calls.
type Store struct {
	pool         *pgxpool.Pool
	table        Table
	q            queries
	key          string // schema-qualified table name, resolved by Start
	replica      string
	leaseTimeout time.Duration
	epoch        atomic.Int64 // of the lease this replica holds
	log          *slog.Logger
	connConfig   *pgx.ConnConfig // for the identity session

	// idMu guards id, this replica's hold on its name; life ends the
	// identity session's watcher at Close.
	idMu sync.Mutex
	id   *identity
	life context.Context
	stop context.CancelFunc
	// checkLocks is set by Start when the table records ordering locks
	// and the server's aggregate keys agree with relay.Aggregate.Key.
	checkLocks bool
}

// Open returns a Store. It does not connect yet.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("create pool: %w", err)
	}
	replica := cfg.Replica
	if replica == "" {
		replica = defaultName()
	}
	lease := cfg.LeaseTimeout
	if lease == 0 {
		lease = relay.DefaultLeaseTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life, stop := context.WithCancel(context.Background())
	return &Store{pool: pool, table: cfg.Table, q: newQueries(cfg.Table, false), replica: replica, leaseTimeout: lease, log: log,
		connConfig: pc.ConnConfig, life: life, stop: stop}, nil
}

// Replica returns this replica's name, as the lease and status show it.
func (s *Store) Replica() string { return s.replica }

// Close ends the identity session and closes the pool.
func (s *Store) Close() {
	s.stop()
	s.closeIdentity()
	s.pool.Close()
}

// Pool exposes the pool for commands that run their own SQL (migrate).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Start resolves the table, creates its position row if missing, refuses a
// database whose rows or position lie beyond its transaction counter, and
// returns the recorded position.
func (s *Store) Start(ctx context.Context) (relay.Position, error) {
	key, lockKeys, err := s.resolveColumns(ctx)
	if err != nil {
		return relay.Position{}, err
	}
	if s.checkLocks, err = s.canCheckLocks(ctx, lockKeys); err != nil {
		return relay.Position{}, err
	}
	s.q = newQueries(s.table, s.checkLocks)
	if _, err := s.pool.Exec(ctx, s.q.ensurePosition, key); err != nil {
		return relay.Position{}, fmt.Errorf("create position row: %w", err)
	}
	s.key = key
	pos, err := s.position(ctx)
	if err != nil {
		return relay.Position{}, err
	}
	var nextText, maxText string
	if err := s.pool.QueryRow(ctx, s.q.horizon).Scan(&nextText, &maxText); err != nil {
		return relay.Position{}, fmt.Errorf("read transaction horizon: %w", err)
	}
	next, err1 := strconv.ParseUint(nextText, 10, 64)
	maxTxid, err2 := strconv.ParseUint(maxText, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return relay.Position{}, fmt.Errorf("parse transaction horizon: %w", err)
	}
	if pos.TxID >= next || maxTxid >= next {
		return relay.Position{}, fmt.Errorf("%w: next transaction id is %d, but the recorded position is %s and the newest row's txid is %d; "+
			"this database was restored or copied. Rows would be skipped, so the relay will not start. "+
			"Publish or move the rows and reset the position (see README, \"Restores\")",
			relay.ErrPositionAhead, next, pos, maxTxid)
	}
	return pos, nil
}

func (s *Store) resolve(ctx context.Context) (string, error) {
	key, _, err := s.resolveColumns(ctx)
	return key, err
}

// resolveColumns names the table as schema.name and tells whether it has
// the lock_keys column.
func (s *Store) resolveColumns(ctx context.Context) (string, bool, error) {
	var key *string
	if err := s.pool.QueryRow(ctx, s.q.resolve, s.table.sql()).Scan(&key); err != nil {
		return "", false, fmt.Errorf("look up table %s: %w", s.table, err)
	}
	if key == nil {
		return "", false, fmt.Errorf("table %s does not exist (run outbox-relay migrate, or apply schema.sql)", s.table)
	}
	var txid, lockKeys bool
	if err := s.pool.QueryRow(ctx, s.q.columns, s.table.sql()).Scan(&txid, &lockKeys); err != nil {
		return "", false, fmt.Errorf("check table %s: %w", s.table, err)
	}
	if !txid {
		return "", false, fmt.Errorf("table %s has no txid xid8 column (apply schema.sql)", s.table)
	}
	return *key, lockKeys, nil
}

// canCheckLocks tells whether rows' ordering locks can be checked: the
// table records them, and the server computes aggregate keys as the relay
// does. When not, it says so in the log once, at start.
func (s *Store) canCheckLocks(ctx context.Context, lockKeys bool) (bool, error) {
	if !lockKeys {
		s.log.Warn("the outbox records no ordering locks (no lock_keys column): the relay cannot check that writers took outbox_lock; run outbox-relay migrate",
			"table", s.table.String())
		return false, nil
	}
	probe := relay.Aggregate{Type: "outbox-relay", ID: "key probe ü"}
	var key int64
	if err := s.pool.QueryRow(ctx, s.q.aggregateKey, probe.Type, probe.ID).Scan(&key); err != nil {
		return false, fmt.Errorf("compute an aggregate key on the server: %w", err)
	}
	if key != probe.Key() {
		s.log.Error("the server computes aggregate keys unlike the relay (a big-endian server?): ordering locks are not checked",
			"server", key, "relay", probe.Key())
		return false, nil
	}
	return true, nil
}

func (s *Store) position(ctx context.Context) (relay.Position, error) {
	var txid string
	var pos relay.Position
	if err := s.pool.QueryRow(ctx, s.q.position, s.key).Scan(&txid, &pos.ID); err != nil {
		return relay.Position{}, fmt.Errorf("read position: %w", err)
	}
	var err error
	if pos.TxID, err = strconv.ParseUint(txid, 10, 64); err != nil {
		return relay.Position{}, fmt.Errorf("parse position txid %q: %w", txid, err)
	}
	return pos, nil
}

// Read returns committed rows after the position whose transactions are
// older than every transaction still running, within the bounds of b. The
// rows past b.Bytes are received and dropped, one at a time, never held:
// the core asks for fewer rows next time (a bound in the query itself, a
// running sum, made the read a quarter slower).
func (s *Store) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, s.q.read, strconv.FormatUint(after.TxID, 10), after.ID, b.Rows, b.MaxPayload)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]relay.Row, 0, min(b.Rows, 256))
	var locks pgtype.DriverBytes // valid until the next row
	var size int32
	bytes := 0
	for rows.Next() {
		r, err := scanRow(rows, &locks, &size)
		if err != nil {
			return nil, err
		}
		r.PayloadSize = int(size)
		if s.checkLocks {
			r.Lock = lockOf(locks, r.Aggregate().Key())
		}
		if bytes += r.Size(); len(out) > 0 && b.Bytes > 0 && bytes > b.Bytes {
			break // the rest is read and dropped by Close, one row at a time
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Record stores pos as the table's position.
func (s *Store) Record(ctx context.Context, pos relay.Position) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, s.q.record, s.key, strconv.FormatUint(pos.TxID, 10), pos.ID, s.epoch.Load())
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return relay.ErrLeaseLost // another replica took the lease (or the row was removed)
	}
	return nil
}

// Status describes the outbox for `outbox-relay status`.
type Status struct {
	Table                   string    `json:"table"`
	Position                string    `json:"position"`
	PositionUpdatedAt       time.Time `json:"position_updated_at"`
	Pending                 int64     `json:"pending"`
	Dead                    int64     `json:"dead"`
	Parked                  int64     `json:"parked"`          // rejected rows waiting for a retry, not yet dead
	DeadAggregates          int64     `json:"dead_aggregates"` // aggregates with dead rows: held back under RELAY_DEAD_ROWS=hold
	OldestPendingAgeSeconds float64   `json:"oldest_pending_age_seconds"`
	Leader                  string    `json:"leader"`                  // replica holding the lease; empty if none
	LeaderState             string    `json:"leader_state"`            // what the leader reported at its last renewal
	LeaseRemainingSeconds   float64   `json:"lease_remaining_seconds"` // until the lease lapses; negative once lapsed
	Epoch                   int64     `json:"epoch"`                   // lease epoch (fencing token)
	OldestXact              *Xact     `json:"oldest_transaction,omitempty"`
}

// Xact is the oldest running (or prepared) transaction that holds a
// transaction id. While it runs, rows of younger transactions wait.
type Xact struct {
	PID        int32   `json:"pid"` // 0 for a prepared transaction
	Database   string  `json:"database"`
	AgeSeconds float64 `json:"age_seconds"`
	Prepared   bool    `json:"prepared"`
}

// Status reports pending and dead rows, the age of the oldest pending row,
// the leader, and the oldest running transaction.
func (s *Store) Status(ctx context.Context) (Status, error) {
	key, err := s.resolve(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{Table: key, Position: "none"}
	var txid string
	var id int64
	err = s.pool.QueryRow(ctx, s.q.status, key).Scan(&txid, &id, &st.PositionUpdatedAt, &st.Epoch, &st.Leader, &st.LeaderState,
		&st.LeaseRemainingSeconds, &st.Pending, &st.OldestPendingAgeSeconds)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// The relay never started on this table: everything is pending.
		err = s.pool.QueryRow(ctx, fmt.Sprintf(
			`SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM %s`, s.table.sql())).
			Scan(&st.Pending, &st.OldestPendingAgeSeconds)
		if err != nil {
			return Status{}, fmt.Errorf("count pending rows: %w", err)
		}
	case err != nil:
		return Status{}, fmt.Errorf("read position: %w", err)
	default:
		st.Position = txid + "/" + strconv.FormatInt(id, 10)
	}
	if err := s.pool.QueryRow(ctx, s.q.deadCount, key).Scan(&st.Dead, &st.Parked, &st.DeadAggregates); err != nil {
		return Status{}, fmt.Errorf("count dead rows: %w", err)
	}
	var x Xact
	err = s.pool.QueryRow(ctx, s.q.blocker).Scan(&x.PID, &x.Database, &x.AgeSeconds, &x.Prepared)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Status{}, fmt.Errorf("find oldest transaction: %w", err)
	default:
		st.OldestXact = &x
	}
	return st, nil
}
