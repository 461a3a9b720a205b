package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// replayAll pages through a selection in pages of two rows.
func replayAll(t *testing.T, s *Admin, plan ReplayPlan, sel ReplaySelection) []int64 {
	t.Helper()
	var got []int64
	var after relay.Position
	for {
		rows, err := s.ReplayRows(context.Background(), plan, sel, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			return got
		}
		for _, r := range rows {
			got = append(got, r.ID)
		}
		after = rows[len(rows)-1].Position()
	}
}

func TestReplaySelectsPublishedRowsInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	insertAged(t, b, "1", 3, 3*time.Hour)
	insertAged(t, b, "2", 2, 2*time.Hour)
	insertAged(t, b, "1", 2, time.Hour)
	insertAged(t, b, "3", 1, 0)
	// Before the relay ever started: nothing is published, everything is
	// pending.
	plan, err := b.store.Admin().PlanReplay(ctx, ReplaySelection{})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Started || plan.Pending != 8 {
		t.Fatalf("plan before the relay started: %+v, want 8 pending", plan)
	}
	if got := replayAll(t, b.store.Admin(), plan, ReplaySelection{}); len(got) != 0 {
		t.Fatalf("replayed %v before the relay started, want nothing", got)
	}

	a := leader(t, b, "a")
	rows := readN(t, a, relay.Position{}, 8)
	// Row 5 is dead; row 7, after the position, is pending.
	if err := a.RecordParked(ctx, rows[6].Position(), []relay.Parked{{Row: rows[5], Attempts: 3, Reason: "no route", Dead: true}}, nil); err != nil {
		t.Fatal(err)
	}
	recordSettled(t, b, a, rows[6].Position())
	id := func(i ...int) []int64 {
		var out []int64
		for _, k := range i {
			out = append(out, rows[k].ID)
		}
		return out
	}

	for _, c := range []struct {
		name                  string
		sel                   ReplaySelection
		want                  []int64
		pending, parked, dead int64
	}{
		{"everything", ReplaySelection{}, id(0, 1, 2, 3, 4, 6), 1, 1, 1},
		{"one aggregate", ReplaySelection{AggregateType: "order", AggregateID: "1"}, id(0, 1, 2, 6), 0, 1, 1},
		{"an aggregate type", ReplaySelection{AggregateType: "order"}, id(0, 1, 2, 3, 4, 6), 1, 1, 1},
		{"another aggregate type", ReplaySelection{AggregateType: "invoice"}, nil, 0, 0, 0},
		{"an event type", ReplaySelection{EventType: "Tested"}, id(0, 1, 2, 3, 4, 6), 1, 1, 1},
		{"ids", ReplaySelection{FromID: rows[1].ID, ToID: rows[4].ID}, id(1, 2, 3, 4), 0, 0, 0},
		{"from an id", ReplaySelection{FromID: rows[4].ID}, id(4, 6), 1, 1, 1},
		{"times", ReplaySelection{Since: rows[3].CreatedAt, Until: rows[5].CreatedAt}, id(3, 4), 0, 0, 0},
		{"until a time", ReplaySelection{Until: rows[3].CreatedAt.Add(time.Second)}, id(0, 1, 2, 3, 4), 0, 0, 0},
		{"since a time and an aggregate", ReplaySelection{Since: rows[3].CreatedAt, AggregateType: "order", AggregateID: "1"}, id(6), 0, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			plan, err := a.Admin().PlanReplay(ctx, c.sel)
			if err != nil {
				t.Fatal(err)
			}
			if !plan.Started || plan.Position != (relay.Position{TxID: rows[6].TxID, ID: rows[6].ID}) || plan.Pruned {
				t.Fatalf("plan %+v, want started at %v, nothing pruned", plan, rows[6].Position())
			}
			if plan.Pending != c.pending || plan.Parked != c.parked || plan.Dead != c.dead {
				t.Errorf("pending %d, parked %d, dead %d; want %d, %d, %d", plan.Pending, plan.Parked, plan.Dead, c.pending, c.parked, c.dead)
			}
			if got := replayAll(t, a.Admin(), plan, c.sel); !slices.Equal(got, c.want) {
				t.Errorf("replayed %v, want %v", got, c.want)
			}
		})
	}
}

func TestReplayPlanReportsWhatRetentionDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := leader(t, b, "a")

	insertAged(t, b, "1", 4, 3*time.Hour)
	insertAged(t, b, "1", 3, 0)
	rows := readN(t, a, relay.Position{}, 7)
	recordSettled(t, b, a, rows[6].Position())
	if plan, err := a.Admin().PlanReplay(ctx, ReplaySelection{}); err != nil || plan.Pruned {
		t.Fatalf("before retention: %+v, %v; want nothing pruned", plan, err)
	}
	if n, err := prune(ctx, t, a, RetentionConfig{Retention: time.Hour}); n != 4 || err != nil {
		t.Fatalf("Prune = %d, %v; want 4", n, err)
	}
	for _, c := range []struct {
		name   string
		sel    ReplaySelection
		pruned bool
		left   int
	}{
		{"everything", ReplaySelection{}, true, 3},
		{"one aggregate", ReplaySelection{AggregateType: "order", AggregateID: "1"}, true, 3},
		{"since before the watermark", ReplaySelection{Since: rows[0].CreatedAt}, true, 3},
		{"since after the watermark", ReplaySelection{Since: rows[3].CreatedAt.Add(time.Second)}, false, 3},
		{"until before the watermark", ReplaySelection{Until: rows[3].CreatedAt}, true, 0},
		{"ids from a deleted one", ReplaySelection{FromID: rows[3].ID}, true, 3},
		{"ids after the deleted ones", ReplaySelection{FromID: rows[4].ID}, false, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			plan, err := a.Admin().PlanReplay(ctx, c.sel)
			if err != nil {
				t.Fatal(err)
			}
			if plan.Pruned != c.pruned || plan.PrunedID != rows[3].ID || !plan.PrunedUntil.Equal(rows[3].CreatedAt) {
				t.Errorf("plan %+v, want pruned %v up to row %d created %v", plan, c.pruned, rows[3].ID, rows[3].CreatedAt)
			}
			if got := replayAll(t, a.Admin(), plan, c.sel); len(got) != c.left {
				t.Errorf("replayed %v, want %d rows", got, c.left)
			}
		})
	}
}
