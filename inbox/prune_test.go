package inbox

import (
	"context"
	"testing"
	"time"
)

// TestPruneDeletesOnlyOldRows: Prune deletes this consumer's rows older
// than the cutoff, in several batches, and leaves recent rows and other
// consumers' rows alone; stale attempts rows go too.
func TestPruneDeletesOnlyOldRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	in := b.newInbox(t, (&recorder{}).handle, Config{Consumer: "billing"})
	const old = 2*pruneBatch + 345 // more than two batches
	b.exec(t, `INSERT INTO inbox (consumer, message_id, processed_at)
		SELECT 'billing', gen_random_uuid(), now() - interval '8 days' FROM generate_series(1, $1)`, old)
	b.exec(t, `INSERT INTO inbox (consumer, message_id, processed_at)
		SELECT 'billing', gen_random_uuid(), now() - interval '6 days' FROM generate_series(1, 10)`)
	b.exec(t, `INSERT INTO inbox (consumer, message_id, processed_at)
		SELECT 'shipping', gen_random_uuid(), now() - interval '30 days' FROM generate_series(1, 7)`)
	b.exec(t, `INSERT INTO inbox_attempts (consumer, message_id, attempts, updated_at) VALUES
		('billing', gen_random_uuid(), 2, now() - interval '8 days'),
		('billing', gen_random_uuid(), 1, now()),
		('shipping', gen_random_uuid(), 1, now() - interval '30 days')`)

	deleted, err := in.Prune(context.Background(), 7*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if deleted != old {
		t.Errorf("Prune deleted %d rows, want %d", deleted, old)
	}
	for _, c := range []struct {
		query string
		want  int
	}{
		{`SELECT count(*) FROM inbox WHERE consumer = 'billing' AND processed_at < now() - interval '7 days'`, 0},
		{`SELECT count(*) FROM inbox WHERE consumer = 'billing'`, 10},
		{`SELECT count(*) FROM inbox WHERE consumer = 'shipping'`, 7},
		{`SELECT count(*) FROM inbox_attempts WHERE consumer = 'billing'`, 1},
		{`SELECT count(*) FROM inbox_attempts WHERE consumer = 'shipping'`, 1},
	} {
		if got := b.count(t, c.query); got != c.want {
			t.Errorf("%s: %d, want %d", c.query, got, c.want)
		}
	}

	if deleted, err := in.Prune(context.Background(), 7*24*time.Hour); err != nil || deleted != 0 {
		t.Errorf("second Prune: %d, %v; want 0, nil", deleted, err)
	}
	if _, err := in.Prune(context.Background(), 0); err == nil {
		t.Error("Prune(0) succeeded; it would forget every message")
	}
}
