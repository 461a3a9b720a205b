package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/relay"
)

// callTimeout bounds each read and position write, so a connection that
// went silent (a half-open TCP connection) fails the call instead of
// stalling the relay until the kernel gives up on it.
const callTimeout = 30 * time.Second

// Store reads an outbox table and records the relay's position in
// PostgreSQL: it is the relay's port, and implements relay.Store. The
// operator's side of the same table is Admin. Its pool connects lazily and
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

	// The logical source (logical_store.go): Start sets stream, which
	// reads the slot.
	source            Source
	slot, publication string
	stream            atomic.Pointer[stream]
	wake              chan struct{} // the stream's: a value when rows came

	// A partitioned table (partition.go): partitions is Config.Partitions,
	// share the partitions held.
	partitions int
	pq         partitionQueries
	share      atomic.Pointer[share]
	shareTakes atomic.Int64
	idle       idleAdvance
	settling   settling // the poll source's recorded open transactions (ahead.go)
}

var _ relay.Store = (*Store)(nil)

// Open returns a Store. It does not connect yet.
func Open(cfg Config) (*Store, error) {
	pool, pc, err := newPool(cfg)
	if err != nil {
		return nil, err
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
	var wake chan struct{}
	if cfg.Source == SourceLogical {
		wake = make(chan struct{}, 1)
	}
	return &Store{wake: wake, pool: pool, table: cfg.Table, q: newQueries(cfg.Table, false, false), source: cfg.Source, slot: cfg.Slot, publication: cfg.Publication, replica: replica, leaseTimeout: lease, log: log,
		connConfig: pc.ConnConfig, life: life, stop: stop,
		partitions: max(cfg.Partitions, 1), pq: newPartitionQueries(cfg.Table)}, nil
}

// Replica returns this replica's name, as the lease and status show it.
func (s *Store) Replica() string { return s.replica }

// Close ends the logical stream and the identity session, and closes the
// pool.
func (s *Store) Close() {
	s.leave()
	s.stopStream()
	s.stop()
	s.closeIdentity()
	s.pool.Close()
}

// Pool exposes the pool, for callers that run their own SQL on the
// store's connections.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Start resolves the table, creates its position row if missing, refuses a
// database whose rows or position lie beyond its transaction counter, and
// returns the recorded position.
func (s *Store) Start(ctx context.Context) (relay.Position, error) {
	key, lockKeys, err := resolveTable(ctx, s.pool, s.table)
	if err != nil {
		return relay.Position{}, err
	}
	if s.checkLocks, err = s.canCheckLocks(ctx, lockKeys); err != nil {
		return relay.Position{}, err
	}
	q := newQueries(s.table, s.checkLocks, s.source == SourceLogical)
	if s.partitions > 1 {
		partitionFilters(&q, s.table)
	}
	s.q = q
	if _, err := s.pool.Exec(ctx, s.q.ensurePosition, key); err != nil {
		return relay.Position{}, fmt.Errorf("create position row: %w", err)
	}
	if err := s.startPartitions(ctx, key); err != nil {
		return relay.Position{}, err
	}
	s.key = key
	pos, err := s.position(ctx)
	if err != nil {
		return relay.Position{}, err
	}
	var next, maxTxid uint64
	if err := s.pool.QueryRow(ctx, s.q.horizon).Scan(&next, &maxTxid); err != nil {
		return relay.Position{}, fmt.Errorf("read transaction horizon: %w", err)
	}
	if pos.TxID >= next || maxTxid >= next {
		return relay.Position{}, fmt.Errorf("%w: next transaction id is %d, but the recorded position is %s and the newest row's txid is %d; "+
			"this database was restored or copied. Rows would be skipped, so the relay will not start. "+
			"Renumber the rows and reset the position (docs/operations.md, \"After a restore or a logical copy\")",
			relay.ErrPositionAhead, next, pos, maxTxid)
	}
	if s.source == SourceLogical {
		return s.startLogical(ctx, pos)
	}
	if s.readsAhead() {
		return s.readRecorded(ctx, pos)
	}
	return pos, nil
}

// resolve names the table as schema.name. It reads no state that Start
// sets, so the services beside the relay (retention) may call it while
// Start runs.
func (s *Store) resolve(ctx context.Context) (string, error) {
	key, _, err := resolveTable(ctx, s.pool, s.table)
	return key, err
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
	var pos relay.Position
	if err := s.pool.QueryRow(ctx, s.q.position, s.key).Scan(&pos.TxID, &pos.ID); err != nil {
		return relay.Position{}, fmt.Errorf("read position: %w", err)
	}
	return pos, nil
}

// Read returns committed rows after the position whose transactions are
// older than every transaction still running, within the bounds of b. The
// rows past b.Bytes are received and dropped, one at a time, never held:
// the core asks for fewer rows next time (a bound in the query itself, a
// running sum, made the read a quarter slower).
func (s *Store) Read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	if st := s.stream.Load(); st != nil {
		return st.read(ctx, after, b)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if s.readsAhead() {
		return s.readAhead(ctx, after, b)
	}
	from, horizon := after, uint64(0)
	if s.partitions > 1 {
		var err error
		if from, horizon, err = s.idleStart(ctx, after); err != nil {
			return nil, err
		}
	}
	rows, err := s.pool.Query(ctx, s.q.read, append([]any{from.TxID, from.ID, b.Rows, b.MaxPayload}, s.readArgs()...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out, _, err := s.collect(rows, b, nil)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 && horizon > 0 && rows.Err() == nil {
		s.idleAdvanced(ctx, horizon)
	}
	return out, rows.Err()
}

// collect scans a read's rows: the lock and size columns, then extra,
// then the row; it stops once b.Bytes is passed (cut). each, if set, sees
// every row before it is kept.
func (s *Store) collect(rows pgx.Rows, b relay.Batch, each func(*relay.Row) error, extra ...any) (out []relay.Row, cut bool, err error) {
	out = make([]relay.Row, 0, min(b.Rows, 256))
	var locks pgtype.DriverBytes // valid until the next row
	var size int32
	lead := append([]any{&locks, &size}, extra...)
	bytes := 0
	for rows.Next() {
		r, err := scanRow(rows, lead...)
		if err != nil {
			return nil, false, err
		}
		r.PayloadSize = int(size)
		if s.checkLocks {
			r.Lock = lockOf(locks, r.Aggregate().Key())
		}
		if bytes += r.Size(); len(out) > 0 && b.Bytes > 0 && bytes > b.Bytes {
			return out, true, nil // the rest is read and dropped by Close, one row at a time
		}
		if each != nil {
			if err := each(&r); err != nil {
				return nil, false, err
			}
		}
		out = append(out, r)
	}
	return out, false, rows.Err()
}

// Record stores pos as the table's position.
func (s *Store) Record(ctx context.Context, pos relay.Position) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	open, err := s.record(ctx, s.pool, pos)
	if err != nil {
		return err
	}
	s.recorded(pos, open)
	return nil
}

// execer runs a statement: the pool, or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// record writes pos under the lease's epoch: the poll source's (txid, id),
// or the logical source's commit LSN and id. When it leaves transactions
// open beside the position (ahead.go), it returns the reading state as
// recorded; otherwise the zero Position.
func (s *Store) record(ctx context.Context, db execer, pos relay.Position) (relay.Position, error) {
	if s.partitions > 1 {
		return relay.Position{}, s.recordShare(ctx, db, pos)
	}
	var tag pgconn.CommandTag
	var err error
	switch {
	case s.stream.Load() != nil:
		tag, err = db.Exec(ctx, s.q.record, s.key, pos.LSN, pos.ID, s.epoch.Load())
	case s.readsAhead() && pos.Ahead != "":
		st, err := stateOf(pos)
		if err != nil {
			return relay.Position{}, err
		}
		if len(st.open) > 0 {
			return s.recordOpen(ctx, db, st)
		}
		tag, err = db.Exec(ctx, s.q.record, s.key, st.cursor.TxID, st.cursor.ID, s.epoch.Load())
		if err != nil {
			return relay.Position{}, err
		}
	default:
		tag, err = db.Exec(ctx, s.q.record, s.key, pos.TxID, pos.ID, s.epoch.Load())
	}
	if err != nil {
		return relay.Position{}, err
	}
	if tag.RowsAffected() != 1 {
		return relay.Position{}, relay.ErrLeaseLost // another replica took the lease (or the row was removed)
	}
	return relay.Position{}, nil
}

// readsAhead reports whether Read reads past running transactions
// (ahead.go): the poll source of an unpartitioned table.
func (s *Store) readsAhead() bool { return s.source != SourceLogical && s.partitions <= 1 }

// recorded tells the logical stream, if any, or the idle advance of a
// partitioned table, that pos is recorded, and the settling of open
// transactions what was left open (record's result).
func (s *Store) recorded(pos, open relay.Position) {
	s.idle.recorded(pos)
	if s.readsAhead() {
		s.settling.recorded(open)
	}
	if st := s.stream.Load(); st != nil {
		st.recordedAt(pos)
	}
}

// stopStream ends the logical stream's session, if any, freeing the slot.
func (s *Store) stopStream() {
	if st := s.stream.Load(); st != nil {
		st.stop()
	}
}
