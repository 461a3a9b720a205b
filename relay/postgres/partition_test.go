package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// partitionedOutbox is an outbox range-partitioned by created_at, as docs/design.md
// ("Retention") tells a team that drops partitions instead of deleting
// rows to create it before schema.sql: the same columns and object names,
// with the partition key in the primary key and the event_id constraint.
const partitionedOutbox = `
CREATE TABLE outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    exchange       text        NULL,
    routing_key    text        NOT NULL,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL DEFAULT 'application/json',
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT outbox_pkey PRIMARY KEY (txid, id, created_at),
    CONSTRAINT outbox_event_id_key UNIQUE (event_id, created_at),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_old PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO (now() - interval '1 hour');
CREATE TABLE outbox_new PARTITION OF outbox FOR VALUES FROM (now() - interval '1 hour') TO (MAXVALUE);`

// TestPartitionedOutbox checks what docs/design.md says of a partitioned outbox:
// schema.sql applies over it, and reading, parking, status, retention and
// replay work on it.
func TestPartitionedOutbox(t *testing.T) {
	t.Parallel()
	url := testenv.EmptyDatabase(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, partitionedOutbox); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := pool.Exec(ctx, outboxrelay.Schema); err != nil {
			t.Fatalf("schema.sql over a partitioned outbox: %v", err)
		}
	}
	store, err := Open(Config{URL: url, Table: Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	b := bundle{url: url, pool: pool, store: store}
	a := leader(t, b, "a")

	insertAged(t, b, "old", 5, 2*time.Hour)
	insertAged(t, b, "young", 5, 0)
	rows := readN(t, a, relay.Position{}, 10)
	// One old row is parked: retention keeps it.
	if err := a.RecordParked(ctx, rows[9].Position(), []relay.Parked{{Row: rows[0], Attempts: 1, Reason: "312 NO_ROUTE"}}, nil); err != nil {
		t.Fatal(err)
	}
	recordSettled(t, b, a, rows[9].Position())
	if heads, err := a.DueHeads(ctx, relay.Batch{Rows: 10}, relay.DeadRowsHold); err != nil || len(heads) != 1 || heads[0].Row.ID != rows[0].ID {
		t.Fatalf("DueHeads = %v, %v; want row %d", heads, err, rows[0].ID)
	}
	if st, err := a.Admin().Status(ctx); err != nil || st.Pending != 0 {
		t.Fatalf("Status = %+v, %v; want nothing pending", st, err)
	}
	if n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour}); n != 4 || err != nil {
		t.Fatalf("Prune = %d, %v; want the 4 old published rows", n, err)
	}
	if got := ids(t, b); !slices.Equal(got, rowIDs(append([]relay.Row{rows[0]}, rows[5:]...))) {
		t.Fatalf("rows left %v, want the parked one and the young ones", got)
	}
	plan, err := a.Admin().PlanReplay(ctx, ReplaySelection{})
	if err != nil || !plan.Pruned || plan.Parked != 1 {
		t.Fatalf("PlanReplay = %+v, %v; want 1 parked and pruned rows", plan, err)
	}
	if got := replayAll(t, a.Admin(), plan, ReplaySelection{}); len(got) != 5 {
		t.Fatalf("replayed %v, want the 5 young rows", got)
	}
}
