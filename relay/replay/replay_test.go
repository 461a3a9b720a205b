package replay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
)

// The engine talks to no server: its reader and publisher are given. The
// replay of real rows through a real broker is tested end to end in
// cmd/outbox-relay (TestReplay); these tests cover what a real broker
// cannot be made to do on demand (refuse exactly the third message).

// pages serves rows as Admin.ReplayRows does: after the cursor, in order,
// limit at a time. It records each limit asked for.
type pages struct {
	rows   []relay.Row
	limits []int
}

func (p *pages) read(_ context.Context, after relay.Position, limit int) ([]relay.Row, error) {
	p.limits = append(p.limits, limit)
	var out []relay.Row
	for _, r := range p.rows {
		if r.Position().After(after) && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func newRows(n int) *pages {
	p := &pages{}
	for i := 1; i <= n; i++ {
		p.rows = append(p.rows, relay.Row{ID: int64(i), TxID: 100, EventID: fmt.Sprintf("e-%d", i), AggregateType: "order",
			AggregateID: "1", EventType: "Placed", RoutingKey: "orders", Headers: []byte(`{"k":"v"}`)})
	}
	return p
}

// publisher confirms every message but the refuse'th (counting from 1 over
// all calls), which it refuses; it records what it was given.
type publisher struct {
	refuse int
	got    []relay.Message
	calls  int
}

func (p *publisher) Publish(_ context.Context, msgs []relay.Message) relay.Confirmation {
	p.calls++
	answers := make([]relay.Answer, len(msgs))
	for i := range msgs {
		p.got = append(p.got, msgs[i])
		answers[i].Confirmed = len(p.got) != p.refuse
		if !answers[i].Confirmed {
			answers[i].Refused = fmt.Errorf("%w: no route", relay.ErrRejected)
		}
	}
	return confirmation(answers)
}

type confirmation []relay.Answer

func (c confirmation) Done() <-chan struct{} { ch := make(chan struct{}); close(ch); return ch }

func (c confirmation) Wait(context.Context) ([]relay.Answer, error) { return c, nil }

func ids(msgs []relay.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.MessageID)
	}
	return out
}

func TestRunPublishesPageByPage(t *testing.T) {
	t.Parallel()
	rows := newRows(5)
	pub := &publisher{}
	res, err := Run(context.Background(), Config{Rows: rows.read, Publisher: pub, BatchSize: 2, Exchange: "events"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 5 || len(res.Skipped) != 0 || pub.calls != 3 {
		t.Fatalf("result %+v in %d publishes, want 5 sent in 3", res, pub.calls)
	}
	if want := []string{"e-1", "e-2", "e-3", "e-4", "e-5"}; !slices.Equal(ids(pub.got), want) {
		t.Fatalf("published %v, want %v", ids(pub.got), want)
	}
	m := pub.got[0]
	if m.Headers[Header] != true || m.Headers["k"] != "v" || m.Exchange != "events" || m.RoutingKey != "orders" {
		t.Fatalf("message %+v, want the row's own with %s = true", m, Header)
	}
	if !slices.Equal(rows.limits, []int{2, 2, 2, 2}) {
		t.Fatalf("read pages of %v, want 2 each", rows.limits)
	}
}

func TestRunSkipsRowsThatCannotBecomeMessages(t *testing.T) {
	t.Parallel()
	rows := newRows(4)
	rows.rows[1].Headers = []byte(`{"nested":{"no":1}}`)
	var skipped []int64
	pub := &publisher{}
	res, err := Run(context.Background(), Config{Rows: rows.read, Publisher: pub, ToQueue: "recover",
		OnSkip: func(row *relay.Row, err error) {
			if !errors.Is(err, relay.ErrInvalid) {
				t.Errorf("row %d skipped for %v, want ErrInvalid", row.ID, err)
			}
			skipped = append(skipped, row.ID)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 3 || !slices.Equal(res.Skipped, []int64{2}) || !slices.Equal(skipped, []int64{2}) {
		t.Fatalf("result %+v, skipped %v; want 3 sent, row 2 skipped", res, skipped)
	}
	for _, m := range pub.got {
		if m.Exchange != "" || m.RoutingKey != "recover" {
			t.Fatalf("message to %q/%q, want the queue recover through the default exchange", m.Exchange, m.RoutingKey)
		}
	}
}

func TestRunStopsAtTheFirstRefusal(t *testing.T) {
	t.Parallel()
	rows := newRows(6)
	pub := &publisher{refuse: 4}
	res, err := Run(context.Background(), Config{Rows: rows.read, Publisher: pub, BatchSize: 3})
	if err == nil || !errors.Is(err, relay.ErrRejected) || !strings.Contains(err.Error(), "replay stopped after 3 rows, at row 4") {
		t.Fatalf("Run = %v, want it stopped at row 4", err)
	}
	if res.Sent != 3 || pub.calls != 2 {
		t.Fatalf("result %+v after %d publishes, want 3 sent in 2", res, pub.calls)
	}
}

func TestRunDryRunSendsNothing(t *testing.T) {
	t.Parallel()
	rows := newRows(3)
	var seen []string
	res, err := Run(context.Background(), Config{Rows: rows.read, BatchSize: 2,
		OnDryRun: func(row *relay.Row, m relay.Message) { seen = append(seen, fmt.Sprint(row.ID, " ", m.MessageID)) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 3 || !slices.Equal(seen, []string{"1 e-1", "2 e-2", "3 e-3"}) {
		t.Fatalf("dry run %+v saw %v, want 3 messages in order", res, seen)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	read := newRows(0).read
	for field, cfg := range map[string]Config{
		"Rows":           {},
		"BatchSize":      {Rows: read, BatchSize: -1},
		"ConfirmTimeout": {Rows: read, ConfirmTimeout: -1},
	} {
		var ce *relay.ConfigError
		if _, err := Run(context.Background(), cfg); !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("Run with a bad %s = %v, want a ConfigError naming it", field, err)
		}
	}
}
