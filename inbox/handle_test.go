package inbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestDuplicateRunsEffectOnce: two copies of one message (as the relay
// publishes after a fault: same message_id, not redelivered) apply the
// effect once, and both are acked.
func TestDuplicateRunsEffectOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{}
	var absorbed []string
	in := b.newInbox(t, rec.handle, Config{OnDuplicate: func(id string) { absorbed = append(absorbed, id) }})
	id := newID()
	for range 2 {
		b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	}

	deliveries, ch := b.consume(t, workQueue)
	for i := range 2 {
		d := next(t, deliveries)
		if d.Redelivered {
			t.Fatalf("copy %d is flagged redelivered; the test wants two distinct publishes", i+1)
		}
		if err := in.Handle(context.Background(), d); err != nil {
			t.Fatalf("copy %d: %v", i+1, err)
		}
	}
	if n := len(rec.calls()); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
	if len(absorbed) != 1 || absorbed[0] != id {
		t.Errorf("OnDuplicate told of %v, want the second copy of %s", absorbed, id)
	}
	if processed, attempts := b.inboxRows(t, id); processed != 1 || attempts != 0 {
		t.Errorf("inbox rows %d, attempts rows %d; want 1, 0", processed, attempts)
	}
	_ = ch.Close()
	if n := b.ready(t, workQueue); n != 0 {
		t.Errorf("%d messages back in the queue; both copies should be acked", n)
	}
}

// TestConsumersDeduplicateSeparately: the inbox is per consumer name; a
// second consumer of the same message processes it too.
func TestConsumersDeduplicateSeparately(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{}
	billing := b.newInbox(t, rec.handle, Config{Consumer: "billing"})
	shipping := b.newInbox(t, rec.handle, Config{Consumer: "shipping"})
	id := newID()
	for range 2 {
		b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	}
	deliveries, _ := b.consume(t, workQueue)
	for _, in := range []*Inbox{billing, shipping} {
		if err := in.Handle(context.Background(), next(t, deliveries)); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.effects(t, id); n != 2 {
		t.Errorf("effect applied %d times, want once per consumer (2)", n)
	}
}

// TestHandlerSeesTheMessage: the Message carries the delivery's properties,
// the canonical id, and the trace context headers.
func TestHandlerSeesTheMessage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{}
	in := b.newInbox(t, rec.handle, Config{})
	id := newID()
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	b.publish(t, amqp.Publishing{
		MessageId:   strings.ToUpper(id),
		Type:        "OrderPaid",
		ContentType: "application/json",
		Timestamp:   ts,
		Headers:     amqp.Table{"aggregate_id": "42", "traceparent": traceparent, "tracestate": "vendor=x"},
		Body:        []byte(`{"id":42}`),
	})
	deliveries, _ := b.consume(t, workQueue)
	if err := in.Handle(context.Background(), next(t, deliveries)); err != nil {
		t.Fatal(err)
	}
	calls := rec.calls()
	if len(calls) != 1 {
		t.Fatalf("handler ran %d times, want 1", len(calls))
	}
	m := calls[0]
	if m.ID != id || m.Type != "OrderPaid" || m.ContentType != "application/json" || m.RoutingKey != workQueue ||
		m.Exchange != "" || string(m.Body) != `{"id":42}` || !m.Timestamp.Equal(ts) || m.Redelivered || m.Attempt != 1 {
		t.Errorf("message = %+v", m)
	}
	if m.Headers["aggregate_id"] != "42" {
		t.Errorf("headers = %v", m.Headers)
	}
	if tp, tstate := m.TraceParent(); tp != traceparent || tstate != "vendor=x" {
		t.Errorf("TraceParent() = %q, %q", tp, tstate)
	}
	// The upper-case spelling was stored canonically, so the lower-case
	// spelling is its duplicate.
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("again")})
	if err := in.Handle(context.Background(), next(t, deliveries)); err != nil {
		t.Fatal(err)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
}

// TestRetriesThenSucceeds: a handler that fails N < MaxAttempts times is
// retried through the broker, its failed attempts leave nothing behind, and
// the effect is applied once in the end.
func TestRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const failures, maxAttempts = 3, 5
	rec := &recorder{fail: func(m Message) error {
		if m.Attempt <= failures {
			return fmt.Errorf("downstream busy (attempt %d)", m.Attempt)
		}
		return nil
	}}
	in := b.newInbox(t, rec.handle, Config{MaxAttempts: maxAttempts})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})

	deliveries, ch := b.consume(t, workQueue)
	for attempt := 1; attempt <= failures; attempt++ {
		err := in.Handle(context.Background(), next(t, deliveries))
		if !errors.Is(err, ErrRequeued) || errors.Is(err, ErrDatabase) || !strings.Contains(err.Error(), "downstream busy") {
			t.Fatalf("attempt %d: err = %v, want a requeued handler failure", attempt, err)
		}
		var recorded int
		var lastError string
		err = b.pool.QueryRow(context.Background(),
			`SELECT attempts, last_error FROM inbox_attempts WHERE consumer = 'billing' AND message_id = $1::uuid`, id).Scan(&recorded, &lastError)
		if err != nil || recorded != attempt || !strings.Contains(lastError, fmt.Sprintf("attempt %d", attempt)) {
			t.Fatalf("after attempt %d: recorded %d, last_error %q (%v)", attempt, recorded, lastError, err)
		}
		if n := b.effects(t, id); n != 0 {
			t.Fatalf("after failed attempt %d the effect is there %d times", attempt, n)
		}
	}
	d := next(t, deliveries)
	if !d.Redelivered {
		t.Error("a requeued message came back without the redelivered flag")
	}
	if err := in.Handle(context.Background(), d); err != nil {
		t.Fatalf("attempt %d: %v", failures+1, err)
	}

	var attempts []int
	for _, m := range rec.calls() {
		attempts = append(attempts, m.Attempt)
	}
	if fmt.Sprint(attempts) != "[1 2 3 4]" {
		t.Errorf("handler saw attempts %v, want [1 2 3 4]", attempts)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
	if processed, attempts := b.inboxRows(t, id); processed != 1 || attempts != 0 {
		t.Errorf("inbox rows %d, attempts rows %d; want 1, 0 (cleared on success)", processed, attempts)
	}
	_ = ch.Close()
	if n := b.ready(t, workQueue) + b.ready(t, deadQueue); n != 0 {
		t.Errorf("%d messages left in the queues, want 0", n)
	}
}

// TestAlwaysFailingGoesToDeadLetterQueue, through Consume: a handler that
// always fails runs MaxAttempts times, then the message is rejected to the
// queue's dead-letter exchange, logged, and its effect is not applied.
func TestAlwaysFailingGoesToDeadLetterQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const maxAttempts = 3
	rec := &recorder{fail: func(Message) error { return errors.New("invoice template missing") }}
	logs := &syncBuffer{}
	in := b.newInbox(t, rec.handle, Config{MaxAttempts: maxAttempts, Logger: slogTo(logs)})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})

	deliveries, ch := b.consume(t, workQueue)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Consume(ctx, deliveries) }()

	dead, _ := b.consume(t, deadQueue)
	d := next(t, dead)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Consume returned %v after its context ended, want nil", err)
	}
	if d.MessageId != id || string(d.Body) != "paid" {
		t.Errorf("dead-lettered %q %q, want %s", d.MessageId, d.Body, id)
	}
	if reason := xDeathReason(d); reason != "rejected" {
		t.Errorf("x-death reason %q, want rejected", reason)
	}
	if n := len(rec.calls()); n != maxAttempts {
		t.Errorf("handler ran %d times, want %d", n, maxAttempts)
	}
	if n := b.effects(t, id); n != 0 {
		t.Errorf("effect of a dead-lettered message applied %d times", n)
	}
	if processed, attempts := b.inboxRows(t, id); processed != 0 || attempts != 0 {
		t.Errorf("inbox rows %d, attempts rows %d; want 0, 0", processed, attempts)
	}
	if log := logs.String(); !strings.Contains(log, "rejected without requeue") || !strings.Contains(log, id) ||
		!strings.Contains(log, "invoice template missing") {
		t.Errorf("the rejection was not logged with the message id and the cause:\n%s", log)
	}
	_ = ch.Close()
	if n := b.ready(t, workQueue); n != 0 {
		t.Errorf("%d messages left in the work queue", n)
	}
}

// TestWithoutMessageIDGoesToDeadLetterQueue: a message that cannot be
// deduplicated is rejected without running the handler.
func TestWithoutMessageIDGoesToDeadLetterQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{}
	in := b.newInbox(t, rec.handle, Config{})
	deliveries, _ := b.consume(t, workQueue)
	dead, _ := b.consume(t, deadQueue)
	for _, id := range []string{"", "order-42"} {
		b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("no id")})
		err := in.Handle(context.Background(), next(t, deliveries))
		if !errors.Is(err, ErrRejected) || !errors.Is(err, ErrMessageID) {
			t.Errorf("message_id %q: err = %v, want ErrRejected and ErrMessageID", id, err)
		}
		d := next(t, dead)
		if d.MessageId != id {
			t.Errorf("dead-lettered message_id %q, want %q", d.MessageId, id)
		}
		_ = d.Ack(false)
	}
	if n := len(rec.calls()); n != 0 {
		t.Errorf("handler ran %d times on messages without a usable id", n)
	}
	if n := b.count(t, `SELECT count(*) FROM effects`); n != 0 {
		t.Errorf("%d effects applied", n)
	}
}

// TestPanicIsAFailedAttempt: a panicking handler does not take the consumer
// down; the attempt is counted and retried.
func TestPanicIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{fail: func(m Message) error {
		if m.Attempt == 1 {
			panic("nil map")
		}
		return nil
	}}
	in := b.newInbox(t, rec.handle, Config{})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	deliveries, _ := b.consume(t, workQueue)
	if err := in.Handle(context.Background(), next(t, deliveries)); !errors.Is(err, ErrRequeued) || !strings.Contains(err.Error(), "panicked: nil map") {
		t.Fatalf("err = %v, want a requeued panic", err)
	}
	if err := in.Handle(context.Background(), next(t, deliveries)); err != nil {
		t.Fatal(err)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
}

// TestRefusedCommitIsAFailedAttempt: when the server refuses the commit (a
// deferred constraint), that is the message's failure, counted, not a
// database outage retried forever.
func TestRefusedCommitIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(t, `CREATE TABLE seats (seat int UNIQUE DEFERRABLE INITIALLY DEFERRED); INSERT INTO seats VALUES (1)`)
	h := func(ctx context.Context, tx pgx.Tx, msg Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO seats VALUES (1)`)
		return err
	}
	in := b.newInbox(t, h, Config{MaxAttempts: 2})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id})
	deliveries, _ := b.consume(t, workQueue)
	dead, _ := b.consume(t, deadQueue)

	err := in.Handle(context.Background(), next(t, deliveries))
	if !errors.Is(err, ErrRequeued) || errors.Is(err, ErrDatabase) {
		t.Fatalf("attempt 1: err = %v, want a counted failure", err)
	}
	if err := in.Handle(context.Background(), next(t, deliveries)); !errors.Is(err, ErrRejected) {
		t.Fatalf("attempt 2: err = %v, want ErrRejected", err)
	}
	if d := next(t, dead); d.MessageId != id {
		t.Errorf("dead-lettered %q, want %s", d.MessageId, id)
	}
	if processed, _ := b.inboxRows(t, id); processed != 0 {
		t.Error("a message whose commit failed is marked processed")
	}
}

// TestDatabaseFailureIsNotCounted: while the database is unreachable the
// message is requeued and its attempts are not used up.
func TestDatabaseFailureIsNotCounted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{}
	down, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	broken, err := New(down, Config{Consumer: "billing", Handler: rec.handle, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	in := b.newInbox(t, rec.handle, Config{MaxAttempts: 1})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})

	deliveries, _ := b.consume(t, workQueue)
	for i := range 3 { // a first delivery, then redeliveries
		err := broken.Handle(context.Background(), next(t, deliveries))
		if !errors.Is(err, ErrDatabase) || !errors.Is(err, ErrRequeued) {
			t.Fatalf("round %d: err = %v, want ErrDatabase and ErrRequeued", i+1, err)
		}
	}
	// With MaxAttempts 1, one counted attempt would have been the last.
	if err := in.Handle(context.Background(), next(t, deliveries)); err != nil {
		t.Fatalf("once the database is back: %v", err)
	}
	if calls := rec.calls(); len(calls) != 1 || calls[0].Attempt != 1 {
		t.Errorf("handler calls %+v, want one, attempt 1", calls)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
}

// TestConcurrentCopiesRunOnce: two copies handled at the same time, on two
// channels: the second waits on the first's inbox row and then skips.
func TestConcurrentCopiesRunOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	var once sync.Once
	entered := make(chan struct{})
	rec := &recorder{fail: func(Message) error {
		once.Do(func() { close(entered) })
		<-release
		return nil
	}}
	in := b.newInbox(t, rec.handle, Config{})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	first, _ := b.consume(t, workQueue)
	second, _ := b.consume(t, workQueue)
	copy1, copy2 := next(t, first), next(t, second)

	errs := make(chan error, 2)
	go func() { errs <- in.Handle(context.Background(), copy1) }()
	select {
	case <-entered:
	case <-time.After(waitTimeout):
		t.Fatal("the first copy's handler did not start")
	}
	go func() { errs <- in.Handle(context.Background(), copy2) }()
	// Wait until the second copy's claim blocks on the first's row.
	waitFor(t, "the second claim to wait on a lock", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO "inbox"%'`) == 1
	})
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := len(rec.calls()); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// xDeathReason returns the reason of the first x-death entry of d.
func xDeathReason(d amqp.Delivery) string {
	deaths, _ := d.Headers["x-death"].([]any)
	if len(deaths) == 0 {
		return ""
	}
	death, _ := deaths[0].(amqp.Table)
	reason, _ := death["reason"].(string)
	return reason
}

// TestErrorTextThatIsNotUTF8IsCounted: a handler error with bytes that are
// not UTF-8 and a NUL, neither of which a text column takes, is recorded
// (cleaned) and its attempts are counted, so the handler runs MaxAttempts
// times and not once more before the message is dead-lettered.
func TestErrorTextThatIsNotUTF8IsCounted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const maxAttempts = 3
	rec := &recorder{fail: func(Message) error { return errors.New("bad \xff\xfe bytes\x00") }}
	in := b.newInbox(t, rec.handle, Config{MaxAttempts: maxAttempts})
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})
	deliveries, _ := b.consume(t, workQueue)
	dead, _ := b.consume(t, deadQueue)
	ctx := context.Background()

	if err := in.Handle(ctx, next(t, deliveries)); !errors.Is(err, ErrRequeued) || errors.Is(err, ErrDatabase) {
		t.Errorf("attempt 1: err = %v, want a counted failure, requeued", err)
	}
	var recorded int
	var lastError string
	err := b.pool.QueryRow(ctx, `SELECT attempts, last_error FROM inbox_attempts WHERE consumer = 'billing' AND message_id = $1::uuid`,
		id).Scan(&recorded, &lastError)
	if err != nil || recorded != 1 || lastError != "bad \uFFFD bytes" {
		t.Errorf("after attempt 1: recorded %d, last_error %q (%v); want 1, %q", recorded, lastError, err, "bad \uFFFD bytes")
	}
	// Then the copies, until one is rejected.
	for {
		err := in.Handle(ctx, next(t, deliveries))
		if errors.Is(err, ErrRejected) {
			break
		}
		if !errors.Is(err, ErrRequeued) {
			t.Fatalf("attempt %d: err = %v, want requeued or rejected", len(rec.calls()), err)
		}
		if n := len(rec.calls()); n > maxAttempts+1 {
			t.Fatalf("handler ran %d times and the message is still not rejected", n)
		}
	}
	if n := len(rec.calls()); n != maxAttempts {
		t.Errorf("handler ran %d times, want %d", n, maxAttempts)
	}
	if d := next(t, dead); d.MessageId != id {
		t.Errorf("dead-lettered %q, want %s", d.MessageId, id)
	}
}

// TestErrorTextIsStorable: errorText keeps what a text column takes and
// never cuts a character in two.
func TestErrorTextIsStorable(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", maxErrorText-1)
	for _, c := range []struct{ in, want string }{
		{"plain", "plain"},
		{"bad \xff\xfe bytes\x00", "bad \uFFFD bytes"},
		{"nul\x00 in\x00side", "nul inside"},
		{long + "é and more", long},                                              // é is 2 bytes: it would straddle the limit
		{long + "a€", long + "a"},                                                // exactly maxErrorText bytes are kept
		{strings.Repeat("€", maxErrorText), strings.Repeat("€", maxErrorText/3)}, // 3 bytes each
	} {
		got := errorText(c.in)
		if got != c.want || !utf8.ValidString(got) || len(got) > maxErrorText {
			t.Errorf("errorText(%.40q...) = %.40q... (%d bytes), want %.40q... (%d bytes)", c.in, got, len(got), c.want, len(c.want))
		}
	}
}
