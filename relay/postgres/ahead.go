package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Reading past running transactions (the poll source of an unpartitioned
// table). A row is read as soon as its own transaction has committed,
// however many older transactions still run: the read remembers those
// that were running when its cursor passed their ids (open), and reads
// their rows once they commit. Every row at or before the cursor is read,
// except the rows of open transactions after their id's entry; so the
// position below which every row is published and no new row can appear
// is the cursor when nothing is open, else the oldest open transaction's
// entry (safe). That is the (txid, id) position recorded, and the one
// retention and operators rely on; the cursor and the open transactions
// are recorded beside it, so that a restart or a new leader reads nothing
// twice.

// readState is how far a read went: see above.
type readState struct {
	cursor relay.Position // TxID and ID only
	open   []openXact     // ascending, every txid below cursor.TxID
}

// openXact is a transaction that was running when the cursor passed its
// id: its rows with ids above id are not read yet (id is 0 until some are).
type openXact struct {
	txid uint64
	id   int64
}

// safe is the position below which every row is read and no new row can
// appear.
func (st readState) safe() relay.Position {
	if len(st.open) == 0 {
		return st.cursor
	}
	return relay.Position{TxID: st.open[0].txid, ID: st.open[0].id}
}

// stateOf decodes the reading state at pos: its note (Position.Ahead), or
// pos itself when it has none.
func stateOf(pos relay.Position) (readState, error) {
	st := readState{cursor: relay.Position{TxID: pos.TxID, ID: pos.ID}}
	if pos.Ahead == "" {
		return st, nil
	}
	f := strings.Fields(pos.Ahead)
	bad := func() (readState, error) { return readState{}, fmt.Errorf("bad read-ahead note %q", pos.Ahead) }
	var err error
	if st.cursor, err = parsePair(f[0], "/"); err != nil {
		return bad()
	}
	for _, s := range f[1:] {
		p, err := parsePair(s, ":")
		if err != nil || !st.push(p.TxID, p.ID) {
			return bad()
		}
	}
	return st, nil
}

// push appends an open transaction, if it keeps open ascending and below
// the cursor.
func (st *readState) push(txid uint64, id int64) bool {
	if txid >= st.cursor.TxID || len(st.open) > 0 && txid <= st.open[len(st.open)-1].txid {
		return false
	}
	st.open = append(st.open, openXact{txid, id})
	return true
}

func parsePair(s, sep string) (relay.Position, error) {
	a, b, ok := strings.Cut(s, sep)
	if !ok {
		return relay.Position{}, fmt.Errorf("no %q in %q", sep, s)
	}
	txid, err1 := strconv.ParseUint(a, 10, 64)
	id, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return relay.Position{}, fmt.Errorf("bad pair %q", s)
	}
	return relay.Position{TxID: txid, ID: id}, nil
}

// note encodes st as the note of the position of row at: empty when the
// state is that position alone.
func (st readState) note(at relay.Position) string {
	if len(st.open) == 0 && st.cursor.TxID == at.TxID && st.cursor.ID == at.ID {
		return ""
	}
	b := make([]byte, 0, 24+24*len(st.open))
	b = strconv.AppendUint(b, st.cursor.TxID, 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, st.cursor.ID, 10)
	for _, x := range st.open {
		b = append(b, ' ')
		b = strconv.AppendUint(b, x.txid, 10)
		b = append(b, ':')
		b = strconv.AppendInt(b, x.id, 10)
	}
	return string(b)
}

// readOf is the position that reading state st continues from, as Acquire
// returns it: safe, with the rest in the note.
func readOf(st readState) relay.Position {
	pos := st.safe()
	pos.Ahead = st.note(pos)
	return pos
}

// openColumns returns the open transactions as the queries take them:
// their ids as text, and how far each is read.
func (st readState) openColumns() (open []string, openIDs []int64) {
	open, openIDs = make([]string, len(st.open)), make([]int64, len(st.open))
	for i, x := range st.open {
		open[i], openIDs[i] = strconv.FormatUint(x.txid, 10), x.id
	}
	return open, openIDs
}

// recordedState rebuilds the state recorded in the position table: safe
// (txid, id), the cursor and the open transactions. A state that does not
// lead to safe (the position was changed by hand, as after a restore) is
// ignored: reading goes on from safe alone.
func recordedState(safe relay.Position, cursorTxid *string, cursorID *int64, open []string, openIDs []int64) readState {
	if cursorTxid != nil && cursorID != nil {
		if txid, err := strconv.ParseUint(*cursorTxid, 10, 64); err == nil {
			st, ok := withOpen(relay.Position{TxID: txid, ID: *cursorID}, open, openIDs)
			if ok && st.safe() == safe {
				return st
			}
		}
	}
	return readState{cursor: safe}
}

// withOpen is the state of cursor with the open transactions as the
// position table holds them; ok is false if there are none or they do not
// parse.
func withOpen(cursor relay.Position, open []string, openIDs []int64) (st readState, ok bool) {
	st.cursor = cursor
	if len(open) == 0 || len(open) != len(openIDs) {
		return readState{}, false
	}
	for i, s := range open {
		txid, err := strconv.ParseUint(s, 10, 64)
		if err != nil || !st.push(txid, openIDs[i]) {
			return readState{}, false
		}
	}
	return st, true
}

// readRow moves st past row r of a read: a row of an open transaction
// marks how far that transaction is read; a row after the cursor moves
// the cursor, and the transactions that were running below it (running,
// ascending ids at or after the old cursor's) become open.
func (st *readState) readRow(r *relay.Row, running []uint64) error {
	if r.TxID < st.cursor.TxID {
		i, ok := slices.BinarySearchFunc(st.open, r.TxID, func(x openXact, t uint64) int { return cmp.Compare(x.txid, t) })
		if !ok || r.ID <= st.open[i].id {
			return fmt.Errorf("read row %d/%d, which is neither after the cursor %s nor of an open transaction", r.TxID, r.ID, st.cursor)
		}
		st.open[i].id = r.ID
		return nil
	}
	if r.TxID == st.cursor.TxID && r.ID <= st.cursor.ID {
		return fmt.Errorf("read row %d/%d, at or before the cursor %s", r.TxID, r.ID, st.cursor)
	}
	for _, x := range running {
		if x < st.cursor.TxID || x >= r.TxID {
			continue // passed already, or not yet
		}
		if len(st.open) > 0 && x <= st.open[len(st.open)-1].txid {
			continue
		}
		id := int64(0)
		if x == st.cursor.TxID {
			id = st.cursor.ID
		}
		st.open = append(st.open, openXact{x, id})
	}
	st.cursor = relay.Position{TxID: r.TxID, ID: r.ID}
	return nil
}

// settle drops the open transactions that have ended, those not in still
// (the read's k_still): every row they committed was read by then.
func (st *readState) settle(still *string) error {
	running, err := parseXids(still)
	if err != nil {
		return err
	}
	st.open = slices.DeleteFunc(st.open, func(x openXact) bool {
		_, ok := slices.BinarySearch(running, x.txid)
		return !ok
	})
	return nil
}

// parseXids parses a comma-separated list of transaction ids into
// ascending order.
func parseXids(s *string) ([]uint64, error) {
	if s == nil || *s == "" {
		return nil, nil
	}
	parts := strings.Split(*s, ",")
	out := make([]uint64, len(parts))
	for i, p := range parts {
		x, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad transaction id %q", p)
		}
		out[i] = x
	}
	slices.Sort(out)
	return out, nil
}

// readAhead is Read for a store that reads past running transactions.
func (s *Store) readAhead(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	st, err := stateOf(after)
	if err != nil {
		return nil, err
	}
	query, args := s.q.readAhead, []any{st.cursor.TxID, st.cursor.ID, b.Rows, b.MaxPayload}
	if len(st.open) > 0 {
		open, ids := st.openColumns()
		query, args = s.q.readAheadOpen, append(args, open, ids)
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var running, still *string
	settled := len(st.open) == 0
	out, cut, err := s.collect(rows, b, func(r *relay.Row) error {
		if !settled && r.TxID >= st.cursor.TxID {
			// Past the open transactions' rows: every one that ended
			// has had all its rows read.
			if err := st.settle(still); err != nil {
				return err
			}
			settled = true
		}
		xids, err := parseXids(running)
		if err != nil {
			return err
		}
		if err := st.readRow(r, xids); err != nil {
			return err
		}
		r.Ahead = st.note(r.Position())
		return nil
	}, &running, &still)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, s.settleIdle(ctx)
	}
	if n := len(out); !settled && !cut && n < b.Rows {
		// Only open transactions' rows, and all of them: the last row's
		// note can drop those that ended.
		if err := st.settle(still); err != nil {
			return nil, err
		}
		out[n-1].Ahead = st.note(out[n-1].Position())
	}
	return out, nil
}

// readRecorded returns the position Acquire hands the core: the recorded
// safe position, with the cursor and open transactions recorded beside it.
func (s *Store) readRecorded(ctx context.Context, safe relay.Position) (relay.Position, error) {
	var cursorTxid *string
	var cursorID *int64
	var open []string
	var ids []int64
	err := s.pool.QueryRow(ctx, s.q.readState, s.key).Scan(&cursorTxid, &cursorID, &open, &ids)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined_column
		return relay.Position{}, fmt.Errorf("%w: %s predates this version of the relay (it has no read_txid column): run outbox-relay migrate",
			relay.ErrNotSetUp, s.table.sibling("outbox_relay_position"))
	}
	if err != nil {
		return relay.Position{}, fmt.Errorf("read the read-ahead state: %w", err)
	}
	pos := readOf(recordedState(safe, cursorTxid, cursorID, open, ids))
	s.settling.recorded(pos) // the recorded state, open transactions and all
	return pos, nil
}

// settleEvery bounds how often an idle relay settles the recorded state.
const settleEvery = time.Second

// settling moves the recorded position of an idle relay past the open
// transactions that ended: while rows come, each record does that, but the
// last one of a burst may leave some open, and nothing else would record
// again until the next row.
type settling struct {
	mu   sync.Mutex
	pos  relay.Position // recorded with open transactions; zero for none
	gen  int            // bumped at every record
	last time.Time      // of the last settle
}

// recorded notes what the last record left open: the reading state as
// the position table holds it, or the zero Position for nothing.
func (t *settling) recorded(open relay.Position) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.pos = open
}

// recordOpen records st, whose transactions are open, dropping first
// those that ended with every row read, and returns the state as
// recorded (the zero Position if none was left open).
func (s *Store) recordOpen(ctx context.Context, db execer, st readState) (relay.Position, error) {
	left, err := s.writeOpen(ctx, db, s.q.recordAhead, st)
	if errors.Is(err, pgx.ErrNoRows) {
		return relay.Position{}, relay.ErrLeaseLost // another replica took the lease (or the row was removed)
	}
	return left, err
}

// writeOpen runs query (recordAhead or settle) for st and returns the
// state as the position table holds it after, as a position for settling:
// the zero Position if nothing was left open. pgx.ErrNoRows means no row
// was written.
func (s *Store) writeOpen(ctx context.Context, db execer, query string, st readState) (relay.Position, error) {
	open, ids := st.openColumns()
	var left []string
	var leftIDs []int64
	if err := db.QueryRow(ctx, query, s.key, st.cursor.TxID, st.cursor.ID, s.epoch.Load(), open, ids).Scan(&left, &leftIDs); err != nil {
		return relay.Position{}, err
	}
	now, ok := withOpen(st.cursor, left, leftIDs)
	if !ok {
		return relay.Position{}, nil
	}
	return readOf(now), nil
}

// settleIdle re-records the recorded state, if transactions are open in
// it, at most every settleEvery: those that ended with every row read are
// dropped, and the position moves on. A record meanwhile wins.
func (s *Store) settleIdle(ctx context.Context) error {
	t := &s.settling
	t.mu.Lock()
	pos, gen := t.pos, t.gen
	due := pos.Ahead != "" && time.Since(t.last) >= settleEvery
	if due {
		t.last = time.Now()
	}
	t.mu.Unlock()
	if !due {
		return nil
	}
	st, err := stateOf(pos)
	if err != nil {
		return err
	}
	left, err := s.writeOpen(ctx, s.pool, s.q.settle, st)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // recorded anew meanwhile, or no longer ours
	}
	if err != nil {
		return fmt.Errorf("settle the recorded position: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen == gen {
		t.pos = left
	}
	return nil
}
