package postgres

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/relay"
)

// TestAggregateKeyMatchesTheServer: relay.Aggregate.Key is the key
// schema.sql's outbox_aggregate_key computes, for texts of every length
// around the hash's 12-byte blocks, multi-byte characters included.
func TestAggregateKeyMatchesTheServer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	alphabet := []rune("abcXYZ019-_/ üé€😀")
	text := func(n int) string {
		r := make([]rune, n)
		for i := range r {
			r[i] = alphabet[rand.N(len(alphabet))]
		}
		return string(r)
	}
	var types, ids []string
	for n := range 40 {
		types = append(types, text(rand.N(8)+1), text(n))
		ids = append(ids, text(n), text(rand.N(30)))
	}
	types, ids = append(types, "order"), append(ids, "42")
	rows, err := b.pool.Query(ctx, `SELECT outbox_aggregate_key(t, i) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS a(t, i, n) ORDER BY n`, types, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var key int64
		if err := rows.Scan(&key); err != nil {
			t.Fatal(err)
		}
		a := relay.Aggregate{Type: types[i], ID: ids[i]}
		if a.Key() != key {
			t.Errorf("key of %q: relay %d, server %d", a, a.Key(), key)
		}
		i++
	}
	if err := rows.Err(); err != nil || i != len(types) {
		t.Fatalf("compared %d keys (%v), want %d", i, err, len(types))
	}
}

// TestReadTellsWhichRowsHeldTheirLock: a row is LockHeld when its
// transaction locked its own aggregate with outbox_lock, LockMissing when
// it locked none or another, and LockUnknown in an outbox made before
// lock_keys, which the store reports at start.
func TestReadTellsWhichRowsHeldTheirLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	write := func(t *testing.T, b bundle, lock string, ids ...string) {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if lock != "" {
			if _, err := tx.Exec(ctx, `SELECT outbox_lock('order', $1)`, lock); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range ids {
			if _, err := tx.Exec(ctx, insertSQL, id, "{}"); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("current schema", func(t *testing.T) {
		t.Parallel()
		b, pos := started(t)
		write(t, b, "1", "1", "2") // locked 1, wrote 1 and 2
		write(t, b, "", "3")       // locked nothing
		rows := readN(t, b.store, pos, 3)
		want := map[string]relay.Lock{"1": relay.LockHeld, "2": relay.LockMissing, "3": relay.LockMissing}
		for _, r := range rows {
			if r.Lock != want[r.AggregateID] {
				t.Errorf("row of order/%s: lock %d, want %d", r.AggregateID, r.Lock, want[r.AggregateID])
			}
		}
	})

	t.Run("an outbox without lock_keys", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if _, err := b.pool.Exec(ctx, `ALTER TABLE outbox DROP COLUMN lock_keys`); err != nil {
			t.Fatal(err)
		}
		var log syncBuffer
		store, err := Open(Config{URL: b.url, Table: Table{Name: "outbox"}, Logger: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		pos, err := store.Start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "run outbox-relay migrate") {
			t.Errorf("start did not say the locks cannot be checked: %q", log.String())
		}
		write(t, b, "1", "1")
		if r := readN(t, store, pos, 1)[0]; r.Lock != relay.LockUnknown {
			t.Errorf("lock %d, want unknown", r.Lock)
		}

		// schema.sql adds the column without rewriting the table, and
		// the rows written before it know of no lock.
		var before, after uint32
		if err := b.pool.QueryRow(ctx, `SELECT pg_relation_filenode('outbox')`).Scan(&before); err != nil {
			t.Fatal(err)
		}
		if _, err := b.pool.Exec(ctx, outboxrelay.Schema); err != nil {
			t.Fatal(err)
		}
		var unlocked int
		if err := b.pool.QueryRow(ctx, `SELECT pg_relation_filenode('outbox'), count(*) FILTER (WHERE lock_keys IS NULL) FROM outbox`).
			Scan(&after, &unlocked); err != nil {
			t.Fatal(err)
		}
		if after != before || unlocked != 1 {
			t.Errorf("after schema.sql: file node %d (was %d), %d rows without locks; want the same file and 1", after, before, unlocked)
		}
	})
}

func TestLockOf(t *testing.T) {
	for _, c := range []struct {
		keys string
		null bool
		key  int64
		want relay.Lock
	}{
		{null: true, key: 1, want: relay.LockMissing},
		{keys: "1", key: 1, want: relay.LockHeld},
		{keys: "-5,17,300", key: 17, want: relay.LockHeld},
		{keys: "-5,17,300", key: 300, want: relay.LockHeld},
		{keys: "-5,17,300", key: -5, want: relay.LockHeld},
		{keys: "-5,17,300", key: 5, want: relay.LockMissing},
		{keys: "117", key: 17, want: relay.LockMissing},
		{keys: "", key: 0, want: relay.LockMissing},
	} {
		var b []byte
		if !c.null {
			b = []byte(c.keys)
		}
		if got := lockOf(b, c.key); got != c.want {
			t.Errorf("lockOf(%q, %d) = %d, want %d", c.keys, c.key, got, c.want)
		}
	}
}
