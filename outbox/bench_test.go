package outbox_test

import (
	"context"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// BenchmarkWrite100 commits transactions of 100 events each.
func BenchmarkWrite100(b *testing.B) { benchmarkWrite(b, 100) }

// BenchmarkWrite1 commits transactions of one event each, for comparison.
func BenchmarkWrite1(b *testing.B) { benchmarkWrite(b, 1) }

func benchmarkWrite(b *testing.B, perTx int) {
	ctx := context.Background()
	conn := connect(b, testenv.Database(b), nil)
	events := numbered("bench", perTx)
	for i := range events {
		events[i].Headers = map[string]any{"tenant": "acme", "attempt": 1}
	}
	for b.Loop() {
		tx, err := conn.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := outbox.Write(ctx, tx, events...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*perTx)/b.Elapsed().Seconds(), "events/s")
}
