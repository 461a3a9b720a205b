package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// TestReadOrdersTransactionIDsAsNumbers: txid 9 comes before txid 10.
// Sorting the text form would put "10" first and, with the cursor, skip
// rows whenever transaction ids gain a digit.
func TestReadOrdersTransactionIDsAsNumbers(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()
	// Writers never set txid, but a test may: these ids are long finished.
	for _, txid := range []string{"10", "9", "100", "99"} {
		if _, err := b.pool.Exec(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, txid)
			VALUES ('order', $1, 'Tested', 'rk', '', $2::text::xid8)`, txid, txid); err != nil {
			t.Fatal(err)
		}
	}
	var got []uint64
	for _, r := range readN(t, b.store, pos, 4) {
		got = append(got, r.TxID)
	}
	if fmt.Sprint(got) != "[9 10 99 100]" {
		t.Fatalf("read in txid order %v, want [9 10 99 100]", got)
	}
}

// TestReadTakesInfiniteTimestamps: a created_at of 'infinity' cannot be a
// time.Time; the row is read with the zero time (a message without
// timestamp) instead of failing every read from there on.
func TestReadTakesInfiniteTimestamps(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()
	for _, at := range []string{"infinity", "-infinity", "2026-01-02 03:04:05+00"} {
		if _, err := b.pool.Exec(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, created_at)
			VALUES ('order', $1::text, 'Tested', 'rk', '', $1::text::timestamptz)`, at); err != nil {
			t.Fatal(err)
		}
	}
	rows := readN(t, b.store, pos, 3)
	if !rows[0].CreatedAt.IsZero() || !rows[1].CreatedAt.IsZero() {
		t.Fatalf("infinite timestamps read as %v and %v, want the zero time", rows[0].CreatedAt, rows[1].CreatedAt)
	}
	if want := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC); !rows[2].CreatedAt.Equal(want) {
		t.Fatalf("created_at %v, want %v", rows[2].CreatedAt, want)
	}
}

// TestReadInEveryQueryMode: rows read the same in each of pgx's query
// modes, the simple protocol of PgBouncer users included, where every
// column comes as text instead of in binary, and they match what
// PostgreSQL prints for each column.
func TestReadInEveryQueryMode(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, content_type, headers, created_at)
VALUES ('0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9', 'order', 'ö-1', 'Placed', NULL, 'rk.1', '\x00ff', 'application/json',
        '{"tenant": "acme", "n": 1.50, "ok": true, "say": "a\"b\u00e9"}', '2026-01-02 03:04:05.123456+00'),
       ('ffffffff-ffff-ffff-ffff-ffffffffffff', 'user', '', 'Gone', 'events', '', '', 'text/plain', '{}', 'infinity')`); err != nil {
		t.Fatal(err)
	}
	var want []string
	rows, err := b.pool.Query(ctx, `
SELECT concat_ws('|', id, txid, event_id, aggregate_type, aggregate_id, event_type, coalesce(exchange, '<nil>'),
                 routing_key, encode(payload, 'hex'), content_type, headers,
                 CASE WHEN isfinite(created_at) THEN to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') ELSE 'zero' END)
  FROM outbox ORDER BY txid, id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	if err := rows.Err(); err != nil || len(want) != 2 {
		t.Fatalf("expected rows: %d, %v", len(want), err)
	}
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			sep := "?"
			if strings.Contains(b.url, "?") {
				sep = "&"
			}
			store, err := Open(Config{URL: b.url + sep + "default_query_exec_mode=" + mode, Table: Table{Name: "outbox"}})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			if _, err := store.Start(ctx); err != nil {
				t.Fatal(err)
			}
			for i, r := range readN(t, store, pos, 2) {
				exchange, at := "<nil>", "zero"
				if r.Exchange != nil {
					exchange = *r.Exchange
				}
				if !r.CreatedAt.IsZero() {
					at = r.CreatedAt.UTC().Format("2006-01-02 15:04:05.000000")
				}
				got := strings.Join([]string{fmt.Sprint(r.ID), fmt.Sprint(r.TxID), r.EventID, r.AggregateType, r.AggregateID,
					r.EventType, exchange, r.RoutingKey, fmt.Sprintf("%x", r.Payload), r.ContentType, string(r.Headers), at}, "|")
				if got != want[i] {
					t.Errorf("row %d read as\n  %s\nwant\n  %s", i, got, want[i])
				}
			}
		})
	}
}

// TestReadUnderConcurrentWriters: 32 writers with random commit delays and
// rollbacks, a reader that follows along; it must read every committed row
// exactly once and no rolled-back row.
func TestReadUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()

	committed, done := writeAtRandom(t, b, 32, 20, false)

	seen := map[string]int{}
	firstRead := map[string]string{} // key -> the read that returned it first
	deadline := time.Now().Add(60 * time.Second)
	for finished := false; time.Now().Before(deadline); {
		select {
		case <-done:
			finished = true
		default:
		}
		rows, err := b.store.Read(ctx, pos, relay.Batch{Rows: 50})
		if err != nil {
			t.Fatal(err)
		}
		var desc []string
		for _, r := range rows {
			desc = append(desc, r.Position().String())
		}
		readDesc := fmt.Sprintf("read after %v: %v", pos, desc)
		for _, r := range rows {
			seen[r.AggregateID]++
			if seen[r.AggregateID] > 1 {
				t.Errorf("row %s at %v read again by %s; first by %s", r.AggregateID, r.Position(), readDesc, firstRead[r.AggregateID])
			}
			firstRead[r.AggregateID] = readDesc
		}
		if len(rows) > 0 {
			pos = rows[len(rows)-1].Position()
		} else if finished && len(seen) >= count(committed) {
			break
		}
	}
	readOnce(t, committed, seen)
}

// writeAtRandom starts writers that each commit rows rows, one per
// transaction, after a random delay of up to 3 ms, a quarter of them rolled
// back; with early, a third take their transaction id up to 2 ms before
// writing their row. It returns the committed rows' keys and a channel
// closed once every writer is done.
func writeAtRandom(t *testing.T, b bundle, writers, rows int, early bool) (*sync.Map, <-chan struct{}) {
	t.Helper()
	ctx := context.Background()
	committed := &sync.Map{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range rows {
				key := fmt.Sprintf("w%d-%d", w, i)
				err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
					if early && rand.N(3) == 0 {
						if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
							return err
						}
						time.Sleep(time.Duration(rand.N(2000)) * time.Microsecond)
					}
					if _, err := tx.Exec(ctx, insertSQL, key, key); err != nil {
						return err
					}
					time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond)
					if rand.N(4) == 0 {
						return errRollback
					}
					return nil
				})
				switch {
				case errors.Is(err, errRollback):
				case err != nil:
					t.Error(err)
					return
				default:
					committed.Store(key, true)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return committed, done
}

var errRollback = errors.New("roll back")

// readOnce checks that every committed row (its key in committed) was
// read exactly once (seen counts reads by key), and nothing else was.
func readOnce(t *testing.T, committed *sync.Map, seen map[string]int) {
	t.Helper()
	n := 0
	committed.Range(func(k, _ any) bool {
		n++
		if seen[k.(string)] != 1 {
			t.Errorf("committed row %s read %d times", k, seen[k.(string)])
		}
		return true
	})
	if len(seen) != n {
		t.Errorf("read %d distinct rows, committed %d (rolled-back rows read?)", len(seen), n)
	}
}

func count(m *sync.Map) int {
	n := 0
	m.Range(func(_, _ any) bool { n++; return true })
	return n
}
