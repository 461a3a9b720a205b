package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
)

// readBatch is the read size of measurement 5.
const readBatch = 1000

// measureRead: measurement 5, the relay's read alone. Store.Read in a loop
// over a 100k-row backlog, each read starting after the last row of the
// previous one, as the relay reads: nothing is written per row, so the
// figure is what PostgreSQL can hand out by position.
func measureRead(t *testing.T, s *suite) {
	var rates []float64
	for round := range s.mode.rounds {
		var rate float64
		t.Run(fmt.Sprintf("round%d", round+1), func(t *testing.T) { rate = readOnce(t) })
		progress("   round%d/read %s", round+1, perSecond(rate, "rows/s"))
		rates = append(rates, rate)
	}
	rate := median(rates)
	r := row{what: "Store.Read by position over a 100k backlog, batch 1000, no per-row writes",
		figure: perSecond(rate, "rows/s")}
	if drain := s.figures["relay-classic-1"]; drain > 0 {
		r.ratio = ratio(rate, drain) + " relay drain (classic)"
	}
	s.add(r)
}

func readOnce(t *testing.T) float64 {
	r := newRig(t, "")
	r.fill(t, backlogRows)
	store, err := postgres.Open(postgres.Config{URL: r.dbURL, Table: postgres.Table{Name: "outbox"}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	if _, err := store.Start(ctx); err != nil { // connects; resolves the table
		t.Fatal(err)
	}
	var pos relay.Position
	total := 0
	begin := time.Now()
	for {
		rows, err := store.Read(ctx, pos, relay.Batch{Rows: readBatch, Bytes: relay.DefaultBatchBytes, MaxPayload: relay.DefaultMaxPayloadBytes})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			break
		}
		for i := range rows {
			if !rows[i].Position().After(pos) {
				t.Fatalf("row %d at %s does not come after %s", rows[i].ID, rows[i].Position(), pos)
			}
			pos = rows[i].Position()
		}
		total += len(rows)
	}
	elapsed := time.Since(begin)
	if total != backlogRows {
		t.Fatalf("read %d rows, want %d", total, backlogRows)
	}
	return float64(total) / elapsed.Seconds()
}
