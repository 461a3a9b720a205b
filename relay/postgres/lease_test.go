package postgres

import (
	"context"
	"errors"
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

	// A restart of b (same name) takes the lease at once; a clean stop
	// releases it for a.
	b2 := replica("b")
	if _, err := b2.Acquire(ctx); err != nil {
		t.Fatalf("b restarted: Acquire = %v", err)
	}
	if err := bb.Record(ctx, relay.Position{TxID: 3, ID: 3}); !errors.Is(err, relay.ErrLeaseLost) {
		t.Fatalf("b's old incarnation: Record = %v, want ErrLeaseLost", err)
	}
	if err := b2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire after b released = %v", err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader != "a" || st.LeaseRemainingSeconds <= 0 || st.Epoch != 4 {
		t.Fatalf("status leader %q, lease %.1fs, epoch %d; want a, positive, 4", st.Leader, st.LeaseRemainingSeconds, st.Epoch)
	}
}
