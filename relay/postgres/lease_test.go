package postgres

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

func TestLeaseFencesADeposedReplica(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	replica := func(name string) *Store {
		s, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Replica: name, LeaseTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if _, err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, bb := replica("a"), replica("b")

	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire = %v", err)
	}
	if _, err := bb.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("b: Acquire while a leads = %v, want ErrLeaseHeld", err)
	}
	if err := a.Record(ctx, relay.Position{TxID: 1, ID: 1}); err != nil {
		t.Fatalf("a: Record = %v", err)
	}

	// a stops renewing (frozen, cut off): its lease lapses, b takes over.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET lease_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	pos, err := bb.Acquire(ctx)
	if err != nil {
		t.Fatalf("b: Acquire after a's lease lapsed = %v", err)
	}
	if pos != (relay.Position{TxID: 1, ID: 1}) {
		t.Fatalf("b starts at %v, want a's recorded 1/1", pos)
	}
	// a wakes up: every write it tries is fenced off.
	if err := a.Record(ctx, relay.Position{TxID: 2, ID: 2}); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("a: Record after losing the lease = %v, want ErrLeaseLost", err)
	}
	if err := a.Renew(ctx, "publishing"); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("a: Renew after losing the lease = %v, want ErrLeaseLost", err)
	}
	if _, err := a.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("a: Acquire while b leads = %v, want ErrLeaseHeld", err)
	}
	if err := bb.Renew(ctx, "publishing"); err != nil {
		t.Fatalf("b: Renew = %v", err)
	}

	// A clean stop releases the lease for a.
	if err := bb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire after b released = %v", err)
	}
	st, err := a.Admin().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader != "a" || st.LeaseRemainingSeconds <= 0 || st.Epoch != 3 {
		t.Fatalf("status leader %q, lease %.1fs, epoch %d; want a, positive, 3", st.Leader, st.LeaseRemainingSeconds, st.Epoch)
	}
}

// TestLeaseTakeOverOnlyFromAGoneHolder: a lease is taken over before it
// lapses only once its holder's session has ended, never because of a
// name; two live replicas cannot share a name; a leader learns at once
// that its identity session ended.
func TestLeaseTakeOverOnlyFromAGoneHolder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	open := func(name string) *Store {
		s, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Replica: name, LeaseTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if _, err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}

	first := open("")
	if _, err := first.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(first.Replica(), mustHostname(t)+"-") || open("").Replica() == first.Replica() {
		t.Fatalf("default names %q: want the host name and a suffix unique to each process", first.Replica())
	}

	// Alive, even with nothing renewing for an hour: no takeover.
	second := open("")
	if _, err := second.Acquire(ctx); !errors.Is(err, relay.ErrLeaseHeld) {
		t.Fatalf("second: Acquire while first lives = %v, want ErrLeaseHeld", err)
	}

	// A live process's name cannot be taken by another.
	twin := open(first.Replica())
	if _, err := twin.Acquire(ctx); !errors.Is(err, relay.ErrNameInUse) || !strings.Contains(err.Error(), first.Replica()) {
		t.Fatalf("twin: Acquire with a live replica's name = %v, want ErrNameInUse naming it", err)
	}
	select {
	case <-twin.Lost():
	default:
		t.Fatal("a replica that holds no name has a live identity")
	}

	// The first's identity session is terminated: it is told at once,
	// and, its session gone, the second takes over before the lease lapses.
	lost := first.Lost()
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND pid <> pg_backend_pid()
		  AND objid = hashtext($1)::oid`, "public.outbox "+first.Replica()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d identity sessions (%v), want 1", n, err)
	}
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the leader was not told that its identity session ended")
	}
	// The client learns of the end before the server has released the
	// session's locks: the takeover may need another try.
	for deadline := time.Now().Add(30 * time.Second); ; {
		began := time.Now()
		_, err := second.Acquire(ctx)
		if err == nil {
			if waited := time.Since(began); waited < quietPeriod {
				t.Errorf("took over after %s, before the quiet period %s", waited, quietPeriod)
			}
			break
		}
		if !errors.Is(err, relay.ErrLeaseHeld) || time.Now().After(deadline) {
			t.Fatalf("second: Acquire after first's session ended = %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := first.Record(ctx, relay.Position{TxID: 1, ID: 1}); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("first: Record after the takeover = %v, want ErrLeaseLost", err)
	}

	// The holder's own name, in a new process, is a past incarnation.
	name := second.Replica()
	second.Close()
	again := open(name)
	if _, err := again.Acquire(ctx); err != nil {
		t.Fatalf("restarted replica: Acquire its own lease = %v", err)
	}
}

func mustHostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
