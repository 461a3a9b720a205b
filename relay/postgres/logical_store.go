package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/relay"
)

// maxIdentifier is the longest name PostgreSQL keeps (NAMEDATALEN - 1).
const maxIdentifier = 63

// DefaultSlot names the logical source's replication slot for the outbox
// key (schema.name) of database db: slots are named across the whole
// server, so the name holds both, and two services sharing a server never
// share a slot by accident. Letters are lower-cased, anything but letters,
// digits and underscores becomes an underscore, and a name too long for
// PostgreSQL is cut and ends in a hash of the whole.
func DefaultSlot(db, key string) string { return identifier("outbox_relay_" + db + "_" + key) }

// DefaultPublication names the publication of the outbox key
// (schema.name); publications are named per database.
func DefaultPublication(key string) string { return identifier("outbox_relay_" + key) }

func identifier(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) <= maxIdentifier {
		return string(b)
	}
	h := fnv.New32a()
	h.Write([]byte(s))
	return fmt.Sprintf("%s_%08x", b[:maxIdentifier-9], h.Sum32())
}

// validSlot reports whether PostgreSQL accepts name as a slot's.
func validSlot(name string) bool {
	return name != "" && len(name) <= maxIdentifier && identifier(name) == name
}

// logicalNames returns the slot and publication of cfg's outbox key in
// database db, the defaults where cfg names none.
func logicalNames(slot, publication, db, key string) (string, string) {
	if slot == "" {
		slot = DefaultSlot(db, key)
	}
	if publication == "" {
		publication = DefaultPublication(key)
	}
	return slot, publication
}

// startLogical checks that the server can feed the logical source, and
// returns its recorded position. fence is the (txid, id) position: every
// row at or before it is published.
func (s *Store) startLogical(ctx context.Context, fence relay.Position) (relay.Position, error) {
	slot, pub := logicalNames(s.slot, s.publication, s.connConfig.Database, s.key)
	if err := checkLogical(ctx, s.pool, slot, pub, s.key); err != nil {
		return relay.Position{}, err
	}
	var pos relay.Position
	var recorded bool
	var from *uint64
	lq := newLogicalQueries(s.table)
	err := s.pool.QueryRow(ctx, lq.position, s.key).Scan(&pos.ID, &pos.LSN, &recorded, &from)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42703": // undefined_column: made by an earlier version
		return relay.Position{}, fmt.Errorf("%w: the position table has no logical position yet: run outbox-relay migrate with RELAY_SOURCE=logical", relay.ErrNotSetUp)
	case err != nil:
		return relay.Position{}, fmt.Errorf("read logical position: %w", err)
	case from == nil:
		return relay.Position{}, fmt.Errorf("%w: slot %s was not set up by outbox-relay migrate, so the relay cannot tell which rows it lacks: run outbox-relay migrate with RELAY_SOURCE=logical", relay.ErrNotSetUp, slot)
	}
	if !recorded {
		// The first start on this slot: rows committed before it was
		// created are not in it, and must be published already.
		var before int64
		if err := s.pool.QueryRow(ctx, lq.olderThanSlot, fence.TxID, fence.ID, *from).Scan(&before); err != nil {
			return relay.Position{}, fmt.Errorf("count rows older than slot %s: %w", slot, err)
		}
		if before > 0 {
			return relay.Position{}, fmt.Errorf("%w: %d rows were committed before slot %s was created and are not published yet, so they are not in it; "+
				"publish them with RELAY_SOURCE=poll first (docs/logical.md, \"Switching to the logical source\")", relay.ErrNotSetUp, before, slot)
		}
	}
	st := s.stream.Load()
	if st == nil {
		st = newStream(&s.connConfig.Config, slot, pub, s.key, s.log, s.wake,
			func(ctx context.Context) error { return endSlotSession(ctx, s.pool, slot) }, s.recordIdle)
		s.stream.Store(st)
	}
	st.setFence(fence)
	return pos, nil
}

// recordIdle records lsn, with no row, as the logical position unless a
// later one is recorded; fenced by the lease like Record.
func (s *Store) recordIdle(ctx context.Context, lsn uint64) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := s.pool.Exec(ctx, s.q.recordIdle, s.key, lsn, 0, s.epoch.Load())
	return err
}

// checkLogical checks the server's wal_level, the slot and the publication.
func checkLogical(ctx context.Context, pool *pgxpool.Pool, slot, pub, key string) error {
	if err := checkWALLevel(ctx, pool); err != nil {
		return err
	}
	var plugin, status string
	var here bool
	err := pool.QueryRow(ctx, slotQuery, slot).Scan(&plugin, &here, &status)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%w: replication slot %s does not exist: run outbox-relay migrate with RELAY_SOURCE=logical", relay.ErrNotSetUp, slot)
	case err != nil:
		return fmt.Errorf("read replication slot %s: %w", slot, err)
	case plugin != "pgoutput" || !here:
		return fmt.Errorf("%w: replication slot %s is not a pgoutput slot of this database (plugin %q): name another with RELAY_SLOT", relay.ErrNotSetUp, slot, plugin)
	case status == "lost":
		return fmt.Errorf("%w: the server invalidated replication slot %s (it retained more WAL than max_slot_wal_keep_size allows): "+
			"the changes since its confirmed LSN are gone; recover as docs/logical.md says (\"Hazards of a slot\")", relay.ErrNotSetUp, slot)
	}
	var exists, published bool
	if err := pool.QueryRow(ctx, publicationQuery, pub, key).Scan(&exists, &published); err != nil {
		return fmt.Errorf("read publication %s: %w", pub, err)
	}
	if !published {
		return fmt.Errorf("%w: publication %s does not publish the inserts of %s: run outbox-relay migrate with RELAY_SOURCE=logical", relay.ErrNotSetUp, pub, key)
	}
	return nil
}

// endSlotSession ends the server session that holds slot, and waits until
// the slot is free.
func endSlotSession(ctx context.Context, pool *pgxpool.Pool, slot string) error {
	if _, err := pool.Exec(ctx, endSlotQuery, slot); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var active bool
		if err := pool.QueryRow(ctx, slotActiveQuery, slot).Scan(&active); err != nil {
			return err
		}
		if !active {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the slot is still active 10 s after its session was ended")
		}
	}
}

// Unrecorded returns, for the logical source, how many rows this replica
// received from the slot and has not recorded, and when the oldest of them
// was created: the rows pending, as far as the leader can tell (the rest
// wait in the slot, whose size status shows). It returns 0 for the poll
// source and for a standby.
func (s *Store) Unrecorded() (int, time.Time) {
	if st := s.stream.Load(); st != nil {
		return st.pending()
	}
	return 0, time.Time{}
}

// Wake returns a channel with a value whenever the logical source has new
// rows, for relay.Config.Wake; nil for the poll source.
func (s *Store) Wake() <-chan struct{} { return s.wake }
