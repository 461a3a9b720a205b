package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type bundle struct {
	url   string
	pool  *pgxpool.Pool
	store *Store
}

func setup(t *testing.T) bundle {
	t.Helper()
	url := testenv.Database(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return bundle{url: url, pool: pool, store: store}
}

// started is setup with the store started; it returns the recorded
// position Start found.
func started(t *testing.T) (bundle, relay.Position) {
	t.Helper()
	b := setup(t)
	pos, err := b.store.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b, pos
}

const insertSQL = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
VALUES ('order', $1, 'Tested', 'rk', convert_to($2, 'UTF8'))`

// readAll reads every row after the position that is readable now.
func readAll(t *testing.T, s *Store, after relay.Position) []relay.Row {
	t.Helper()
	var all []relay.Row
	for {
		rows, err := s.Read(context.Background(), after, relay.Batch{Rows: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			return all
		}
		all = append(all, rows...)
		after = rows[len(rows)-1].Position()
	}
}

// readN reads until n rows after the position have arrived. The snapshot
// xmin that gates reading is cluster-wide, so a transaction held open by a
// test running in parallel against another database delays rows here; that
// is latency, which this waits out, never loss.
func readN(t *testing.T, s *Store, after relay.Position, n int) []relay.Row {
	t.Helper()
	var all []relay.Row
	deadline := time.Now().Add(30 * time.Second)
	for len(all) < n && time.Now().Before(deadline) {
		rows := readAll(t, s, after)
		if len(rows) == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		all = append(all, rows...)
		after = rows[len(rows)-1].Position()
	}
	if len(all) != n {
		t.Fatalf("read %d rows, want %d", len(all), n)
	}
	return all
}

func TestStoreStartRecordRead(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()
	if pos != (relay.Position{}) {
		t.Fatalf("fresh position %v, want zero", pos)
	}
	for i := range 5 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprint(i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	rows := readN(t, b.store, pos, 5)
	if err := b.store.Record(ctx, rows[2].Position()); err != nil {
		t.Fatal(err)
	}
	// A restart resumes after the recorded row.
	again, err := Open(Config{URL: b.url, Table: Table{Schema: "public", Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	pos, err = again.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pos != rows[2].Position() {
		t.Fatalf("restarted at %v, want %v", pos, rows[2].Position())
	}
	if rest := readN(t, again, pos, 2); rest[0].ID != rows[3].ID {
		t.Fatalf("after restart read from row %d, want row %d", rest[0].ID, rows[3].ID)
	}
	st, err := again.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 2 || st.Dead != 0 || st.OldestPendingAgeSeconds <= 0 || st.Position != pos.String() {
		t.Fatalf("status %+v, want 2 pending at %v", st, pos)
	}
}

// TestReadNeverPassesAnOpenTransaction is RELIABILITY entry 1: a row whose
// transaction started earlier but commits later must not be skipped.
func TestReadNeverPassesAnOpenTransaction(t *testing.T) {
	t.Parallel()
	b, pos := started(t)
	ctx := context.Background()

	early, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback(ctx)
	if _, err := early.Exec(ctx, insertSQL, "early", "early"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := b.pool.Exec(ctx, insertSQL, fmt.Sprint("late", i), "late"); err != nil {
			t.Fatal(err)
		}
	}
	if rows := readAll(t, b.store, pos); len(rows) != 0 {
		t.Fatalf("read %d rows while an older transaction is open; want 0 (reading past it could skip its row)", len(rows))
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if rows := readN(t, b.store, pos, 4); rows[0].AggregateID != "early" {
		t.Fatalf("after commit the first row read is %q, want the early one", rows[0].AggregateID)
	}
}

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

	var committed sync.Map
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := range 20 {
				key := fmt.Sprintf("w%d-%d", w, i)
				tx, err := b.pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := tx.Exec(ctx, insertSQL, key, key); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond)
				if rand.N(4) == 0 {
					_ = tx.Rollback(ctx)
					continue
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
					return
				}
				committed.Store(key, true)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

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
		} else if finished && len(seen) >= count(&committed) {
			break
		}
	}
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

// TestStartRefusesRestoredDatabase is RELIABILITY entry 2.
func TestStartRefusesRestoredDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// As after a restore onto a server whose counter is behind: the
	// position is beyond the next transaction id.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox_relay_position SET txid = (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Start(ctx); !errors.Is(err, relay.ErrPositionAhead) {
		t.Fatalf("Start = %v, want ErrPositionAhead", err)
	}
}

func TestStartWaitsForMissingTable(t *testing.T) {
	t.Parallel()
	url := testenv.EmptyDatabase(t)
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, err = store.Start(context.Background())
	if err == nil || errors.Is(err, relay.ErrPositionAhead) || !strings.Contains(err.Error(), "does not exist (run outbox-relay migrate") {
		t.Fatalf("Start on an empty database = %v, want a retryable error saying to run migrate", err)
	}
}

func TestParseTable(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Table{
		"outbox": {Name: "outbox"}, "svc.outbox": {Schema: "svc", Name: "outbox"}, "_x9.Y_1": {Schema: "_x9", Name: "Y_1"},
	} {
		got, err := ParseTable(in)
		if err != nil || got != want {
			t.Errorf("ParseTable(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a.b.c", "outbox; DROP TABLE x", `"outbox"`, "out-box", "1outbox", "a.", ".a", "o\x00", "o'b", "o b", string(make([]byte, 64))} {
		if _, err := ParseTable(bad); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
}

func TestListenerWakesAfterBackendTerminated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := b.pool.Exec(ctx, `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()`); err != nil {
		t.Fatal(err)
	}
	l := NewListener(b.url, testLogger(t))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { l.Run(ctx) })

	wait := func(what string) {
		t.Helper()
		select {
		case <-l.C():
		case <-time.After(10 * time.Second):
			t.Fatalf("no wake-up after %s", what)
		}
	}
	wait("connecting") // the wake-up sent after every (re)connect
	if _, err := b.pool.Exec(ctx, insertSQL, "1", "1"); err != nil {
		t.Fatal(err)
	}
	wait("an insert")

	var killed int
	if err := b.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'outbox-relay listener'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listener backends (%v), want 1", killed, err)
	}
	wait("reconnecting")
	if _, err := b.pool.Exec(ctx, insertSQL, "2", "2"); err != nil {
		t.Fatal(err)
	}
	wait("an insert after reconnecting")
}

func count(m *sync.Map) int {
	n := 0
	m.Range(func(_, _ any) bool { n++; return true })
	return n
}

// TestWatchHoldUpsLogsALongTransaction: an open transaction holds a
// committed row back; the watcher says so once, and once when it ends.
func TestWatchHoldUpsLogsALongTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := b.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx)
	if _, err := long.Exec(ctx, insertSQL, "long", "long"); err != nil { // takes a transaction id
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, insertSQL, "waiting", "waiting"); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		WatchHoldUps(ctx, b.store, 20*time.Millisecond, 100*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	})
	waitFor := func(s string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), s); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never logged %q; log:\n%s", s, logs.String())
			}
		}
	}
	waitFor("publishing held back")
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("no longer held back")
	if n := strings.Count(logs.String(), "publishing held back"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
