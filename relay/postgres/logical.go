package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/outboxrelay/outboxrelay/relay"
)

// The logical source reads the outbox's inserts from a replication slot
// (plugin pgoutput, over a publication of the table), which hands them
// over in commit order as they commit, whatever the transactions' ids and
// whoever else holds a transaction open.
//
// A stream is one replica's reading of the slot. Its position is the commit
// LSN of a row's transaction and the row's id: the store records it in
// outbox_relay_position like the poll source's, fenced by the lease, and
// only then confirms the commit LSN to the server. Confirming a commit's
// LSN, not its end, makes the server send that transaction again after a
// restart, and the stream skips its rows up to the recorded one: a crash
// replays from the recorded row, never from a transaction boundary before
// it. With nothing unrecorded, the stream confirms what the server says it
// has decoded (keep-alives), so the slot advances on an idle table.
type stream struct {
	conn        *pgconn.Config // a replication=database connection
	slot        string
	publication string
	table       string // schema.name, as relation messages name it
	log         *slog.Logger
	wake        chan struct{} // a value when rows were queued
	// terminate ends the server session that holds the slot (a deposed
	// leader's, still connected), so this one can take it.
	terminate func(ctx context.Context) error
	// idle records lsn, where the server's decoding is complete, as the
	// position when every row is recorded: the (txid, id) position and the
	// status follow an idle outbox too. It does nothing if a later
	// position is recorded.
	idle func(ctx context.Context, lsn uint64) error

	mu       sync.Mutex
	sess     *session
	queue    []relay.Row
	queued   int            // bytes queued (Row.Size)
	handed   relay.Position // the last row Read returned, or where the session began
	recorded relay.Position // the last position recorded
	limit    relay.Batch    // what the queue holds at most: twice the last read's bounds, and its payload bound
	fence    relay.Position // rows at or before it (txid, id) are published
	room     chan struct{}  // a value when Read took rows
	failure  error          // why the session ended, for the next Read
	// unrecorded lists the rows the session received and the relay has
	// not recorded yet, in stream order: what is pending for this source.
	unrecorded []pendingRow
}

type pendingRow struct {
	pos     relay.Position
	created time.Time
}

// session is one replication connection, from START_REPLICATION to its end.
type session struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// standbyEvery is how often the stream tells the server what it may
// discard, and answers its keep-alives at the latest.
const standbyEvery = time.Second

func newStream(conn *pgconn.Config, slot, publication, table string, log *slog.Logger, wake chan struct{},
	terminate func(context.Context) error, idle func(context.Context, uint64) error) *stream {
	c := conn.Copy()
	c.RuntimeParams["replication"] = "database"
	c.RuntimeParams["application_name"] = "outbox-relay logical"
	return &stream{conn: c, slot: slot, publication: publication, table: table, log: log, terminate: terminate, idle: idle,
		wake: wake, room: make(chan struct{}, 1),
		limit: relay.Batch{Rows: 2 * relay.DefaultBatchSize, Bytes: 2 * relay.DefaultBatchBytes, MaxPayload: relay.DefaultMaxPayloadBytes}}
}

// read returns queued rows after the position, within b. A position other
// than the last row it returned (a restart from the recorded position, after
// a failure or a new lease) starts a new session from there. It does not
// wait for rows: a value on wake says when there are some.
func (s *stream) read(ctx context.Context, after relay.Position, b relay.Batch) ([]relay.Row, error) {
	s.mu.Lock()
	s.limit = relay.Batch{Rows: 2 * b.Rows, Bytes: 2 * b.Bytes, MaxPayload: b.MaxPayload}
	if err := s.failure; err != nil {
		s.failure = nil
		s.mu.Unlock()
		return nil, err
	}
	if s.sess == nil || after != s.handed {
		s.mu.Unlock()
		s.restart(after)
		return nil, nil
	}
	defer s.mu.Unlock()
	n, bytes := 0, 0
	for n < len(s.queue) && n < b.Rows {
		if bytes += s.queue[n].Size(); n > 0 && b.Bytes > 0 && bytes > b.Bytes {
			break
		}
		n++
	}
	if n == 0 {
		return nil, nil
	}
	rows := make([]relay.Row, n)
	copy(rows, s.queue)
	for _, r := range rows {
		s.queued -= r.Size()
	}
	s.queue = append(s.queue[:0], s.queue[n:]...)
	s.handed = rows[n-1].Position()
	signal(s.room)
	return rows, nil
}

// restart ends the session, if any, and starts one from pos.
func (s *stream) restart(pos relay.Position) {
	s.stop()
	ctx, cancel := context.WithCancel(context.Background())
	sess := &session{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.sess, s.handed, s.recorded = sess, pos, pos
	s.queue, s.queued, s.failure, s.unrecorded = nil, 0, nil, nil
	s.mu.Unlock()
	go func() {
		defer close(sess.done)
		err := s.run(ctx, sess, pos)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.sess == sess {
			s.sess = nil
			if ctx.Err() == nil {
				s.failure = fmt.Errorf("logical replication from slot %s: %w", s.slot, err)
				signal(s.wake) // the next read reports it
			}
		}
	}()
}

// stop ends the session, if any, and waits for it to close its connection,
// which frees the slot for another replica.
func (s *stream) stop() {
	s.mu.Lock()
	sess := s.sess
	s.sess = nil
	s.mu.Unlock()
	if sess != nil {
		sess.cancel()
		<-sess.done
	}
}

// recordedAt tells the stream that pos is recorded: its commit LSN may be
// confirmed to the server.
func (s *stream) recordedAt(pos relay.Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos.LSN >= s.recorded.LSN {
		s.recorded = pos
	}
	// The rows up to pos are recorded: those of earlier commits, and of
	// its own up to its row.
	n := 0
	for i, r := range s.unrecorded {
		if r.pos.LSN > pos.LSN {
			break
		}
		if r.pos.LSN < pos.LSN || r.pos == pos {
			n = i + 1
		}
	}
	s.unrecorded = append(s.unrecorded[:0], s.unrecorded[n:]...)
}

// recordedIdle is recordedAt for an idle position recorded by session
// sess, unless another session has begun since.
func (s *stream) recordedIdle(sess *session, lsn uint64) {
	s.mu.Lock()
	current := s.sess == sess
	s.mu.Unlock()
	if current {
		s.recordedAt(relay.Position{LSN: lsn})
	}
}

// pending returns how many rows the session received that are not
// recorded, and when the oldest of them was created.
func (s *stream) pending() (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.unrecorded) == 0 {
		return 0, time.Time{}
	}
	return len(s.unrecorded), s.unrecorded[0].created
}

// setFence sets the (txid, id) below which every row is published.
func (s *stream) setFence(p relay.Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fence = relay.Position{TxID: p.TxID, ID: p.ID}
}

// decoding is what a session knows of the stream it receives.
type decoding struct {
	from      relay.Position // skip rows up to it
	skipping  bool           // still inside from's transaction, before its row
	relations map[uint32]*columns
	inTx      bool
	lsn       uint64 // the current transaction's commit LSN
	last      relay.Position
	decoded   uint64 // the server's decoding is known complete up to here
	confirmed uint64 // the last LSN confirmed to the server
	fence     relay.Position
	sess      *session
	// idleAt is the last LSN recorded while idle; idling runs that
	// record, beside the receiving, one at a time.
	idleAt atomic.Uint64
	idling sync.WaitGroup
	busy   atomic.Bool
}

// run receives the slot's changes from pos until ctx ends or the
// connection fails.
func (s *stream) run(ctx context.Context, sess *session, pos relay.Position) error {
	conn, err := s.connect(ctx, pos)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Reads wait until the next standby update is due, or until ctx ends:
	// a deadline on the socket, not a context per message, which would
	// cost a watcher each.
	stopWatch := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Now()) })
	defer stopWatch()
	s.mu.Lock()
	fence := s.fence
	s.mu.Unlock()
	d := &decoding{from: pos, skipping: pos.LSN != 0 && pos.ID != 0, relations: map[uint32]*columns{}, last: pos, fence: fence, sess: sess}
	defer d.idling.Wait()
	next := time.Now().Add(standbyEvery)
	if err := conn.Conn().SetReadDeadline(next); err != nil {
		return err
	}
	for {
		if time.Now().After(next) {
			if err := s.standby(ctx, conn, d); err != nil {
				return err
			}
			next = time.Now().Add(standbyEvery)
			if ctx.Err() == nil {
				if err := conn.Conn().SetReadDeadline(next); err != nil {
					return err
				}
			}
		}
		if s.full() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.room:
			case <-time.After(time.Until(next)):
			}
			continue
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			reply, err := s.receive(d, m.Data)
			if err != nil {
				return err
			}
			if reply {
				next = time.Now() // answer at once
				_ = conn.Conn().SetReadDeadline(next)
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		}
	}
}

// connect opens a replication connection and starts replication from
// pos's transaction. The slot may still be held by a deposed leader's
// session: this replica holds the lease, so it ends that session.
func (s *stream) connect(ctx context.Context, pos relay.Position) (*pgconn.PgConn, error) {
	for attempt := 0; ; attempt++ {
		conn, err := pgconn.ConnectConfig(ctx, s.conn)
		if err != nil {
			return nil, err
		}
		err = pglogrepl.StartReplication(ctx, conn, s.slot, pglogrepl.LSN(pos.LSN), pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names " + quoteLiteral(s.publication)}})
		if err == nil {
			return conn, nil
		}
		conn.Close(context.Background())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" || attempt > 0 { // object_in_use: the slot is active
			return nil, fmt.Errorf("start replication: %w", err)
		}
		s.log.Warn("the replication slot is held by another session; ending it, as this replica holds the lease", "slot", s.slot)
		if err := s.terminate(ctx); err != nil {
			return nil, fmt.Errorf("end the session holding slot %s: %w", s.slot, err)
		}
	}
}

// full reports whether the queue holds all it may.
func (s *stream) full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) >= s.limit.Rows || (s.limit.Bytes > 0 && s.queued >= s.limit.Bytes)
}

// receive handles one message of the replication stream and reports
// whether the server asked for an answer.
func (s *stream) receive(d *decoding, data []byte) (reply bool, err error) {
	if len(data) == 0 {
		return false, nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return false, err
		}
		if !d.inTx {
			d.decoded = max(d.decoded, uint64(k.ServerWALEnd))
		}
		return k.ReplyRequested, nil
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return false, err
		}
		return false, s.decode(d, x.WALData)
	}
	return false, nil
}

// decode handles one pgoutput message.
func (s *stream) decode(d *decoding, data []byte) error {
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		if m.Namespace+"."+m.RelationName == s.table {
			cols, err := newColumns(m)
			if err != nil {
				return err
			}
			d.relations[m.RelationID] = cols
		} else {
			delete(d.relations, m.RelationID)
		}
	case *pglogrepl.BeginMessage:
		d.inTx, d.lsn = true, uint64(m.FinalLSN)
		if d.skipping && d.lsn > d.from.LSN {
			d.skipping = false // the recorded row's transaction was confirmed whole
		}
	case *pglogrepl.InsertMessage:
		cols := d.relations[m.RelationID]
		if cols == nil {
			return nil // not the outbox
		}
		s.mu.Lock()
		maxPayload := s.limit.MaxPayload
		s.mu.Unlock()
		row, err := cols.row(m.Tuple, maxPayload)
		if err != nil {
			return fmt.Errorf("decode an outbox row of the transaction committed at %s: %w", pglogrepl.LSN(d.lsn), err)
		}
		row.LSN = d.lsn
		if s.skip(d, row) {
			return nil
		}
		d.last = row.Position()
		s.push(row)
	case *pglogrepl.CommitMessage:
		d.inTx = false
		d.decoded = max(d.decoded, uint64(m.TransactionEndLSN))
	}
	return nil
}

// skip reports whether the row is already published: in a transaction
// committed before the session's start, in the start's transaction at or
// before its row, or at or before the fence.
func (s *stream) skip(d *decoding, row relay.Row) bool {
	if row.LSN < d.from.LSN {
		return true
	}
	if d.skipping && row.LSN == d.from.LSN {
		if row.ID == d.from.ID {
			d.skipping = false
		}
		return true
	}
	return !(relay.Position{TxID: row.TxID, ID: row.ID}).After(d.fence)
}

func (s *stream) push(row relay.Row) {
	s.mu.Lock()
	s.queue = append(s.queue, row)
	s.queued += row.Size()
	s.unrecorded = append(s.unrecorded, pendingRow{row.Position(), row.CreatedAt})
	s.mu.Unlock()
	signal(s.wake)
}

// standby tells the server how far the slot may advance: to the recorded
// row's commit LSN, or, with every row it sent recorded and no transaction
// half received, to where its decoding is known complete, which it then
// records as the position (ID 0: no row of a transaction committed there is
// recorded). A row's position is never past the last row decoded; an idle
// position is past it.
func (s *stream) standby(ctx context.Context, conn *pgconn.PgConn, d *decoding) error {
	s.mu.Lock()
	rec := s.recorded
	s.mu.Unlock()
	lsn := rec.LSN
	if !d.inTx && (rec == d.last || rec.LSN > d.last.LSN) {
		// Nothing unrecorded lies before the decoded point: confirm it,
		// and record it beside the receiving, which it must not hold up
		// (a failed record is tried again a second later).
		if at := d.decoded; at > rec.LSN && at > d.idleAt.Load() && d.busy.CompareAndSwap(false, true) {
			d.idling.Go(func() {
				defer d.busy.Store(false)
				if s.idle(ctx, at) == nil {
					d.idleAt.Store(at)
					s.recordedIdle(d.sess, at)
				}
			})
		}
		lsn = max(lsn, d.decoded)
	}
	lsn = max(lsn, d.confirmed)
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(lsn)}); err != nil {
		return err
	}
	d.confirmed = lsn
	return nil
}

// signal puts a value on c unless one is waiting.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
