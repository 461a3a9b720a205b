package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// A replica's identity is its name, held as a session advisory lock on a
// connection of its own for as long as the process lives. Two live
// processes can therefore never hold one name: the second is refused
// (relay.ErrNameInUse) until the first is gone. And a lease whose holder's
// name lock is free belongs to a process whose database session has ended:
// a crashed or killed process, whose kernel closed its connections. Such a
// lease may be taken over at once instead of after it lapses. A live leader
// whose identity session ends (an administrator terminated it, a proxy cut
// it) stops publishing as soon as it notices, which is before a standby can
// take over: the standby waits quietPeriod after it first finds the name
// free, and takes the lease only if it is still free and still the same
// term.

// quietPeriod is how long a lease's holder must have been seen gone before
// another replica takes the lease over before it lapses. A live leader
// notices that its identity session ended within milliseconds (its
// connection's socket closes); this covers that with a wide margin.
const quietPeriod = 500 * time.Millisecond

// defaultName is the name of a replica that was given none: the host name
// and six random hex digits, so that replicas on one host, or restarts of
// one, never share a name.
func defaultName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return host + "-" + hex.EncodeToString(b[:])
}

// identity is a held name: the connection whose session holds the name's
// lock, and a channel closed once that session has ended.
type identity struct {
	conn    *pgx.Conn
	session context.Context // ends with the session
	done    chan struct{}   // the watcher has closed conn
}

// nameLockArgs are the two keys of the name's advisory lock: the two-key
// form, which never meets the one-key locks of outbox_lock. The lock is per
// table, so relays of two tables in one database may share a name.
func (s *Store) nameLockArgs() []any {
	return []any{"outbox-relay replica", s.key + " " + s.replica}
}

// ensureIdentity holds this replica's name, connecting and locking it if
// the session that held it ended. It fails with an error wrapping
// relay.ErrNameInUse while another live session holds the name.
func (s *Store) ensureIdentity(ctx context.Context) error {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.id != nil && s.id.session.Err() == nil {
		return nil
	}
	if s.id != nil {
		<-s.id.done
		s.id = nil
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, s.connConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect the identity session: %w", err)
	}
	held := false
	// A restarted replica's old session may take a moment to end after
	// its process died: try a few times before saying the name is taken.
	for try := 0; try < 5 && !held; try++ {
		if try > 0 {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		if err := conn.QueryRow(cctx, s.q.lockName, s.nameLockArgs()...).Scan(&held); err != nil {
			_ = conn.Close(context.Background())
			return fmt.Errorf("lock the replica name: %w", err)
		}
	}
	if !held {
		_ = conn.Close(context.Background())
		return fmt.Errorf("%w: another live replica of %s is named %q; this one will not lead while it runs "+
			"(give each replica its own RELAY_REPLICA_NAME, or leave it unset for a unique one)", relay.ErrNameInUse, s.key, s.replica)
	}
	session, ended := context.WithCancel(context.Background())
	id := &identity{conn: conn, session: session, done: make(chan struct{})}
	s.id = id
	go func() {
		// Nothing is ever sent on this session: waiting on it returns
		// only when the session ends or the store closes.
		_, _ = conn.WaitForNotification(s.life)
		ended()
		_ = conn.Close(context.Background())
		close(id.done)
	}()
	return nil
}

// Lost implements relay.Store: a channel closed when the session that holds
// this replica's name ends. A leader must stop publishing then.
func (s *Store) Lost() <-chan struct{} {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.id == nil {
		return closedChan
	}
	return s.id.session.Done()
}

// closeIdentity ends the identity session, at Close.
func (s *Store) closeIdentity() {
	s.idMu.Lock()
	id := s.id
	s.idMu.Unlock()
	if id != nil {
		<-id.done
	}
}

// holderGone reports whether the lease holder's process is provably gone:
// it is this replica's own name (held by this process, so any lease under
// it is a past incarnation's), or no session holds the holder's name.
func (s *Store) holderGone(ctx context.Context, holder string) (bool, error) {
	if holder == "" {
		return false, nil
	}
	if holder == s.replica {
		return true, nil
	}
	var free bool
	err := s.pool.QueryRow(ctx, s.q.nameFree, "outbox-relay replica", s.key+" "+holder).Scan(&free)
	if err != nil {
		return false, fmt.Errorf("check the lease holder's session: %w", err)
	}
	return free, nil
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
