package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/relay"
)

// A partitioned table (Config.Partitions > 1) is published by every live
// replica at once: its aggregates are hashed into partitions
// (outbox_partition, relay.Aggregate.Partition), each with a lease, a
// position and parked rows of its own, and each replica holds a share of
// the partitions and publishes their rows only. The core sees a replica's
// share as one lease and one position: Acquire returns the smallest
// position of the partitions taken, Read skips each partition's rows up to
// its own position, and Record moves every partition held to the position
// recorded, which is right since rows come in one order, whatever their
// partition.
//
// Shares: the live replicas are those whose outbox_relay_replica row is
// fresh and whose name a session holds. With N of them, sorted by name,
// replica i's share is P/N partitions, one more for the first P mod N.
// Each renewal checks the share; when it should shrink, or could grow (a
// partition is free, lapsed or held by a replica that is gone), Renew
// returns relay.ErrHandOver: the core finishes what is in flight, records
// it and releases, then acquires again. A partition therefore changes
// hands only after its holder recorded what it published, or after its
// lease lapsed or its holder's session ended (the fencing of lease.go and
// identity.go, per partition).

// share is the partitions this replica holds, in ascending order, with the
// epoch of each one's lease and the position it had when taken.
type share struct {
	parts  []int
	keys   []string
	epochs []int64
	floors []relay.Position
	// floorTx and floorID, indexed by partition, are the read's floors:
	// NULL for partitions not held.
	floorTx []*string
	floorID []*int64
}

// partitionKey names partition k's row in outbox_relay_position.
func partitionKey(table string, k int) string { return table + "#" + strconv.Itoa(k) }

// partitionKeys names the rows of all n partitions of table.
func partitionKeys(table string, n int) []string {
	keys := make([]string, n)
	for k := range keys {
		keys[k] = partitionKey(table, k)
	}
	return keys
}

// startPartitions, at Start, partitions a table that was never published,
// creates missing partition rows, and refuses a table partitioned another
// number of ways (relay.ErrNotSetUp: the procedure that changes it).
func (s *Store) startPartitions(ctx context.Context, key string) error {
	if s.partitions > 1 {
		if _, err := s.pool.Exec(ctx, s.pq.setPartitions, key, s.partitions); err != nil {
			return fmt.Errorf("partition the table: %w", err)
		}
	}
	n, err := s.partitionCount(ctx, key)
	if err != nil {
		return err
	}
	if n != s.partitions {
		return s.otherCount(key, n)
	}
	if n > 1 {
		if _, err := s.pool.Exec(ctx, s.pq.ensureParts, key, n); err != nil {
			return fmt.Errorf("create partition rows: %w", err)
		}
	}
	return nil
}

// partitionCount reads the number of partitions of the table key.
func (s *Store) partitionCount(ctx context.Context, key string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, s.pq.partitions, key).Scan(&n)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined_column
		return 0, fmt.Errorf("%w: %s predates this version of the relay (it has no partitions column): run outbox-relay migrate",
			relay.ErrNotSetUp, s.table.sibling("outbox_relay_position"))
	}
	if err != nil {
		return 0, fmt.Errorf("read the table's partitions: %w", err)
	}
	return n, nil
}

// otherCount is the refusal of a replica whose count is not the table's n.
func (s *Store) otherCount(key string, n int) error {
	return fmt.Errorf("%w: RELAY_PARTITIONS is %d, but %s is published in %d partitions; replicas with different counts would publish rows twice and out of order. "+
		"To change it, stop every replica and run outbox-relay migrate with the new RELAY_PARTITIONS (docs/partitions.md, \"Changing the number of partitions\")",
		relay.ErrNotSetUp, s.partitions, key, n)
}

// livePeers heartbeats this replica and returns the live replicas' names,
// sorted, this one's among them.
func (s *Store) livePeers(ctx context.Context) ([]string, error) {
	if _, err := s.pool.Exec(ctx, s.pq.beat, s.key, s.replica, s.leaseTimeout.Milliseconds()); err != nil {
		return nil, fmt.Errorf("note this replica as running: %w", err)
	}
	rows, err := s.pool.Query(ctx, s.pq.live, s.key, s.replica)
	if err != nil {
		return nil, fmt.Errorf("list running replicas: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list running replicas: %w", err)
	}
	if !slices.Contains(names, s.replica) {
		names = append(names, s.replica)
		slices.Sort(names)
	}
	return names, nil
}

// quota is this replica's share of the partitions among names.
func (s *Store) quota(names []string) int {
	i, n := slices.Index(names, s.replica), len(names)
	q := s.partitions / n
	if i < s.partitions%n {
		q++
	}
	return q
}

// partState is a partition's lease as the states query reads it.
type partState struct {
	part   int
	holder string
	valid  bool // the lease has not lapsed
	epoch  int64
	gone   bool // its holder's session ended
}

func (s *Store) partStates(ctx context.Context) ([]partState, error) {
	rows, err := s.pool.Query(ctx, s.pq.states, s.key, s.replica, partitionKeys(s.key, s.partitions))
	if err != nil {
		return nil, fmt.Errorf("read partition leases: %w", err)
	}
	defer rows.Close()
	var out []partState
	for rows.Next() {
		var p partState
		var key string
		if err := rows.Scan(&key, &p.holder, &p.valid, &p.epoch, &p.gone); err != nil {
			return nil, err
		}
		if p.part, err = strconv.Atoi(key[len(s.key)+1:]); err != nil {
			return nil, fmt.Errorf("partition row %q: %w", key, err)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b partState) int { return a.part - b.part })
	return out, rows.Err()
}

// takeable reports whether another replica could take the partition now,
// without waiting: free, lapsed, this replica's own name's, or its holder
// is gone.
func (p partState) takeable(self string) bool {
	return p.holder == "" || !p.valid || p.holder == self || p.gone
}

// A replica whose share is not empty but which found nothing to take keeps
// looking every joinPoll, for joinWait or an eighth of the lease timeout if
// shorter, before it stands by: the others hand partitions over at their
// next renewal, and a replica that joins should take them then, not at its
// next attempt. An eighth, with the quiet period, keeps the core's first
// renewal before the deadline it counts from the start of Acquire.
const (
	joinPoll = 50 * time.Millisecond
	joinWait = 2 * time.Second
)

// acquireShare implements Acquire for a partitioned table: it takes up to
// this replica's share of the partitions that are free, lapsed, its own
// name's, or whose holder's session is gone (a quiet period after it was
// first seen gone, as Acquire), and returns the smallest of their
// positions.
func (s *Store) acquireShare(ctx context.Context) (relay.Position, error) {
	deadline := time.Now().Add(min(joinWait, s.leaseTimeout/8))
	for {
		pos, quota, err := s.acquireOnce(ctx)
		if !errors.Is(err, relay.ErrLeaseHeld) || quota == 0 || time.Now().After(deadline) {
			return pos, err
		}
		select {
		case <-time.After(joinPoll):
		case <-ctx.Done():
			return relay.Position{}, err
		}
	}
}

// acquireOnce is one attempt of acquireShare; it also returns the share
// this replica may hold.
func (s *Store) acquireOnce(ctx context.Context) (relay.Position, int, error) {
	if err := s.ensureIdentity(ctx); err != nil {
		return relay.Position{}, 0, err
	}
	names, err := s.livePeers(ctx)
	if err != nil {
		return relay.Position{}, 0, err
	}
	quota := s.quota(names)
	states, err := s.partStates(ctx)
	if err != nil {
		return relay.Position{}, 0, err
	}
	sh := &share{}
	var own, gone []partState
	for _, p := range states {
		if p.holder == s.replica {
			own = append(own, p)
		}
	}
	// Its own name's first (a past term's, kept where they were), then
	// free or lapsed ones.
	seen := map[int]bool{}
	for _, p := range append(own, states...) {
		switch {
		case seen[p.part]:
			continue
		case len(sh.parts) >= quota:
		case p.holder == s.replica && p.valid:
			// A past incarnation's, whose session ended: taken after the
			// quiet period, as a gone holder's.
			gone = append(gone, p)
		case p.holder == "" || !p.valid:
			if err := s.takePart(ctx, sh, p.part, -1); err != nil {
				return relay.Position{}, 0, err
			}
		case p.gone:
			gone = append(gone, p)
		}
		seen[p.part] = true
	}
	if len(sh.parts) < quota && len(gone) > 0 {
		// Gone now; take over only if still gone, in the same term, a
		// quiet period later, by which a live holder has stopped
		// publishing.
		select {
		case <-time.After(quietPeriod):
		case <-ctx.Done():
			return relay.Position{}, 0, ctx.Err()
		}
		again, err := s.partStates(ctx)
		if err != nil {
			return relay.Position{}, 0, err
		}
		for _, p := range gone {
			i := slices.IndexFunc(again, func(a partState) bool { return a.part == p.part })
			if len(sh.parts) >= quota || i < 0 || !(again[i].gone || again[i].holder == s.replica) || again[i].epoch != p.epoch {
				continue
			}
			if err := s.takePart(ctx, sh, p.part, p.epoch); err != nil {
				return relay.Position{}, 0, err
			}
		}
	}
	// What its name still holds beyond its share goes back at once.
	var extra []string
	for _, p := range own {
		if !slices.Contains(sh.parts, p.part) {
			extra = append(extra, partitionKey(s.key, p.part))
		}
	}
	if len(extra) > 0 {
		if _, err := s.pool.Exec(ctx, s.pq.releaseOwn, extra, s.replica); err != nil {
			return relay.Position{}, 0, fmt.Errorf("release partitions beyond this replica's share: %w", err)
		}
	}
	if len(sh.parts) == 0 {
		return relay.Position{}, quota, fmt.Errorf("%w: every partition this replica could take is held (%d replicas running, a share of %d of %d partitions)",
			relay.ErrLeaseHeld, len(names), quota, s.partitions)
	}
	s.setShare(sh)
	s.shareTakes.Add(1)
	low := sh.floors[0]
	for _, f := range sh.floors[1:] {
		if low.After(f) {
			low = f
		}
	}
	s.idle.reset(low)
	return low, quota, nil
}

// takePart takes partition k's lease if it is free or lapsed, or still in
// term goneEpoch (-1 for none), and adds it to sh.
func (s *Store) takePart(ctx context.Context, sh *share, k int, goneEpoch int64) error {
	key := partitionKey(s.key, k)
	var epoch int64
	var pos relay.Position
	err := s.pool.QueryRow(ctx, s.pq.take, key, s.replica, s.leaseTimeout.Milliseconds(), goneEpoch, s.key, s.partitions).
		Scan(&epoch, &pos.TxID, &pos.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // taken by another replica meanwhile
	}
	if err != nil {
		return fmt.Errorf("take partition %d: %w", k, err)
	}
	sh.parts, sh.keys, sh.epochs, sh.floors = append(sh.parts, k), append(sh.keys, key), append(sh.epochs, epoch), append(sh.floors, pos)
	return nil
}

// setShare installs sh, with the read's floors.
func (s *Store) setShare(sh *share) {
	sh.floorTx, sh.floorID = make([]*string, s.partitions), make([]*int64, s.partitions)
	for i, k := range sh.parts {
		tx, id := strconv.FormatUint(sh.floors[i].TxID, 10), sh.floors[i].ID
		sh.floorTx[k], sh.floorID[k] = &tx, &id
	}
	s.share.Store(sh)
}

// renewShare implements Renew for a partitioned table: it renews every
// partition held, moves the table's published prefix, and returns
// relay.ErrHandOver when the share should change.
func (s *Store) renewShare(ctx context.Context, state string) error {
	sh := s.share.Load()
	if sh == nil {
		return relay.ErrLeaseLost
	}
	tag, err := s.pool.Exec(ctx, s.pq.renew, sh.keys, sh.epochs, s.replica, s.leaseTimeout.Milliseconds(), state)
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	if tag.RowsAffected() != int64(len(sh.keys)) {
		return relay.ErrLeaseLost
	}
	if _, err := s.pool.Exec(ctx, s.pq.prefix, s.key, partitionKeys(s.key, s.partitions)); err != nil {
		return fmt.Errorf("record the published prefix: %w", err)
	}
	names, err := s.livePeers(ctx)
	if err != nil {
		return err
	}
	quota := s.quota(names)
	if quota < len(sh.parts) {
		return relay.ErrHandOver
	}
	if quota == len(sh.parts) {
		return nil
	}
	states, err := s.partStates(ctx)
	if err != nil {
		return err
	}
	for _, p := range states {
		if !slices.Contains(sh.parts, p.part) && p.takeable(s.replica) {
			return relay.ErrHandOver
		}
	}
	return nil
}

// releaseShare implements Release for a partitioned table.
func (s *Store) releaseShare(ctx context.Context) error {
	sh := s.share.Swap(nil)
	if sh == nil {
		return nil
	}
	if _, err := s.pool.Exec(ctx, s.pq.release, sh.keys, sh.epochs, s.replica); err != nil {
		return fmt.Errorf("release partitions: %w", err)
	}
	return nil
}

// recordShare writes pos to every partition held, fenced by each one's
// epoch.
func (s *Store) recordShare(ctx context.Context, db execer, pos relay.Position) error {
	sh := s.share.Load()
	if sh == nil {
		return relay.ErrLeaseLost
	}
	tag, err := db.Exec(ctx, s.pq.record, sh.keys, sh.epochs, pos.TxID, pos.ID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != int64(len(sh.keys)) {
		return relay.ErrLeaseLost // another replica took a partition
	}
	return nil
}

// fence returns the position row and epoch that fence a write about an
// aggregate's parked rows: its partition's, or the table's.
func (s *Store) fence(a relay.Aggregate) (string, int64) {
	if s.partitions <= 1 {
		return s.key, s.epoch.Load()
	}
	return s.partitionFence(s.key, a.Partition(s.partitions))
}

// partitionFence returns partition k's row of the table key and the
// epoch under which this replica holds it, -1 if it does not.
func (s *Store) partitionFence(key string, k int) (string, int64) {
	fence := partitionKey(key, k)
	if sh := s.share.Load(); sh != nil {
		if i := slices.Index(sh.parts, k); i >= 0 {
			return fence, sh.epochs[i]
		}
	}
	return fence, -1
}

// heldArgs are the parked-row queries' arguments that select the
// aggregates of partitions held: none for a table that is not partitioned.
func (s *Store) heldArgs() []any {
	if s.partitions <= 1 {
		return nil
	}
	var parts []int
	if sh := s.share.Load(); sh != nil {
		parts = sh.parts
	}
	if parts == nil {
		parts = []int{}
	}
	return []any{parts, s.partitions}
}

// readArgs are the read's arguments that select the rows of partitions
// held, after each one's position.
func (s *Store) readArgs() []any {
	if s.partitions <= 1 {
		return nil
	}
	sh := s.share.Load()
	if sh == nil {
		sh = &share{floorTx: make([]*string, s.partitions), floorID: make([]*int64, s.partitions)}
	}
	return []any{sh.floorTx, sh.floorID, s.partitions}
}

// Share returns the partitions this replica holds (none when the table is
// not partitioned, or while it stands by) and how many times it took a
// share.
func (s *Store) Share() (parts []int, takes int64) {
	if sh := s.share.Load(); sh != nil {
		parts = slices.Clone(sh.parts)
	}
	return parts, s.shareTakes.Load()
}

// leave deletes this replica's row among the running ones, at Close.
func (s *Store) leave() {
	if s.partitions <= 1 || s.key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = s.pool.Exec(ctx, s.pq.leave, s.key, s.replica)
}

// idleAdvanceEvery is how often, at most, a replica of a partitioned table
// that has published everything of its partitions moves their positions
// up to the server's horizon.
const idleAdvanceEvery = time.Second

// idleAdvance moves the positions of a replica's partitions past the rows
// of other partitions while its own have none: without it, a replica whose
// partitions stay quiet would read from the same old position at every
// poll, through every row the others published since, and hold back the
// table's prefix (retention's bound) for good.
//
// It keeps the position recorded for the share. When a read starts at or
// before it (nothing read is unrecorded), at most every idleAdvanceEvery,
// the store first samples the server's snapshot xmin X, then reads: if the
// read finds nothing, no row of the partitions held lies before (X, 0),
// since every transaction below X had ended before the read began, and
// (X, 0) is recorded for them. Later reads start from it.
type idleAdvance struct {
	mu   sync.Mutex
	done relay.Position // recorded for the share: at the take, then by Record and by advances
	at   time.Time      // the last sample
}

// reset starts the idle advance of a new share at pos.
func (a *idleAdvance) reset(pos relay.Position) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done, a.at = pos, time.Time{}
}

// recorded notes a position recorded by the core.
func (a *idleAdvance) recorded(pos relay.Position) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if pos.After(a.done) {
		a.done = pos
	}
}

// idleStart returns where a read after after starts: after, or the
// position recorded for the share if that is later. When a sample is due
// it also returns the server's snapshot xmin, taken before the read.
func (s *Store) idleStart(ctx context.Context, after relay.Position) (relay.Position, uint64, error) {
	a := &s.idle
	a.mu.Lock()
	done, due := a.done, !after.After(a.done) && time.Since(a.at) >= idleAdvanceEvery
	if due {
		a.at = time.Now()
	}
	a.mu.Unlock()
	from := after
	if done.After(after) {
		from = done
	}
	if !due {
		return from, 0, nil
	}
	var xmin uint64
	if err := s.pool.QueryRow(ctx, s.pq.xmin).Scan(&xmin); err != nil {
		return from, 0, err
	}
	return from, xmin, nil
}

// idleAdvanced records (xmin, 0) for the partitions held, after a read
// that found nothing. A failure changes nothing: the next sample retries,
// and a lost lease shows at the next renewal.
func (s *Store) idleAdvanced(ctx context.Context, xmin uint64) {
	pos := relay.Position{TxID: xmin}
	a := &s.idle
	a.mu.Lock()
	ahead := pos.After(a.done)
	a.mu.Unlock()
	if !ahead {
		return
	}
	if err := s.recordShare(ctx, s.pool, pos); err == nil {
		a.recorded(pos)
	}
}
