package inbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The crash tests run a consumer as a subprocess (this test binary again,
// see TestMain) that SIGKILLs itself at a chosen point, so that the broker
// sees a consumer really die: its connection drops and its unacked
// delivery comes back, flagged redelivered.
const (
	helperEnv         = "INBOX_TEST_HELPER" // the mode; set only in the subprocess
	helperDatabaseEnv = "INBOX_TEST_HELPER_DATABASE_URL"
	helperAMQPEnv     = "INBOX_TEST_HELPER_AMQP_URL"
	helperAttemptsEnv = "INBOX_TEST_HELPER_MAX_ATTEMPTS"

	// killAfterCommit applies the effect and dies after the commit, before
	// the ack.
	killAfterCommit = "kill-after-commit"
	// killInHandler records the run (outside the transaction) and dies in
	// the handler, every time: a message that kills its consumer.
	killInHandler = "kill-in-handler"
)

// TestKilledBetweenCommitAndAck: a consumer killed after its commit and
// before its ack gets the message back from the broker; the restarted
// consumer acks it without applying the effect again.
func TestKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("paid")})

	p := startHelper(t, b, killAfterCommit, 5)
	p.waitKilled(t)
	if n := b.effects(t, id); n != 1 {
		t.Fatalf("after the killed consumer: effect applied %d times, want 1 (committed)\n%s", n, p.out.String())
	}

	rec := &recorder{}
	in := b.newInbox(t, rec.handle, Config{})
	deliveries, ch := b.consume(t, workQueue)
	d := next(t, deliveries)
	if d.MessageId != id || !d.Redelivered {
		t.Fatalf("got message %s redelivered=%v, want %s redelivered", d.MessageId, d.Redelivered, id)
	}
	if err := in.Handle(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.calls()); n != 0 {
		t.Errorf("the restarted consumer ran the handler %d times, want 0", n)
	}
	if n := b.effects(t, id); n != 1 {
		t.Errorf("effect applied %d times, want 1", n)
	}
	if processed, attempts := b.inboxRows(t, id); processed != 1 || attempts != 0 {
		t.Errorf("inbox rows %d, attempts rows %d; want 1, 0", processed, attempts)
	}
	_ = ch.Close()
	if n := b.ready(t, workQueue) + b.ready(t, deadQueue); n != 0 {
		t.Errorf("%d messages left in the queues, want 0", n)
	}
}

// TestMessageThatKillsItsConsumer: a message whose handler kills the
// process every time is counted anyway, and dead-lettered after
// MaxAttempts+1 runs (the first run of a first delivery is not counted).
func TestMessageThatKillsItsConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(t, `CREATE TABLE runs (message_id uuid NOT NULL)`)
	const maxAttempts = 2
	id := newID()
	b.publish(t, amqp.Publishing{MessageId: id, Body: []byte("poison")})
	dead, _ := b.consume(t, deadQueue)

	for round := 1; ; round++ {
		if round > maxAttempts+3 {
			t.Fatalf("still not dead-lettered after %d consumer restarts", round-1)
		}
		p := startHelper(t, b, killInHandler, maxAttempts)
		select {
		case <-p.done:
			p.waitKilled(t)
			continue
		case d, ok := <-dead:
			p.stop()
			if !ok || d.MessageId != id {
				t.Fatalf("dead-letter queue: %q (open %v), want %s", d.MessageId, ok, id)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("round %d: the consumer neither died nor dead-lettered the message\n%s", round, p.out.String())
		}
		break
	}
	if n := b.count(t, `SELECT count(*) FROM runs`); n != maxAttempts+1 {
		t.Errorf("the handler ran %d times, want MaxAttempts+1 = %d", n, maxAttempts+1)
	}
	if processed, attempts := b.inboxRows(t, id); processed != 0 || attempts != 0 {
		t.Errorf("inbox rows %d, attempts rows %d; want 0, 0", processed, attempts)
	}
}

// helperProc is a consumer subprocess.
type helperProc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
}

// startHelper runs the consumer subprocess in mode on the bundle's database
// and work queue.
func startHelper(t *testing.T, b *bundle, mode string, maxAttempts int) *helperProc {
	t.Helper()
	p := &helperProc{done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(),
		helperEnv+"="+mode,
		helperDatabaseEnv+"="+b.dbURL,
		helperAMQPEnv+"="+b.broker.URL,
		helperAttemptsEnv+"="+strconv.Itoa(maxAttempts))
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

// stop kills the subprocess, if still running, and waits for it.
func (p *helperProc) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitKilled waits for the subprocess to end and fails the test unless it
// died of SIGKILL (its own).
func (p *helperProc) waitKilled(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("the consumer subprocess did not kill itself\n%s", p.out.String())
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the consumer subprocess ended with %v, want SIGKILL\n%s", p.cmd.ProcessState, p.out.String())
	}
}

// runHelper is the subprocess: it consumes the work queue with an Inbox in
// mode until it kills itself, and returns an exit code only on a setup
// error or when its deliveries end.
func runHelper(mode string) int {
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "inbox test helper:", err)
		return 1
	}
	pool, err := pgxpool.New(ctx, os.Getenv(helperDatabaseEnv))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	conn, err := amqp.Dial(os.Getenv(helperAMQPEnv))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fail(err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		return fail(err)
	}
	deliveries, err := ch.Consume(workQueue, "", false, false, false, false, nil)
	if err != nil {
		return fail(err)
	}
	maxAttempts, err := strconv.Atoi(os.Getenv(helperAttemptsEnv))
	if err != nil {
		return fail(err)
	}

	die := func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not instant
	}
	var handler Handler
	switch mode {
	case killAfterCommit:
		handler = func(ctx context.Context, tx pgx.Tx, msg Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, body) VALUES ($1, $2)`, msg.ID, string(msg.Body))
			return err
		}
	case killInHandler:
		handler = func(ctx context.Context, tx pgx.Tx, msg Message) error {
			if _, err := pool.Exec(ctx, `INSERT INTO runs (message_id) VALUES ($1)`, msg.ID); err != nil {
				return err
			}
			die()
			return nil
		}
	default:
		return fail(fmt.Errorf("unknown mode %q", mode))
	}
	in, err := New(pool, Config{
		Consumer:    "billing",
		Handler:     handler,
		MaxAttempts: maxAttempts,
		Backoff:     func(int) time.Duration { return 0 },
	})
	if err != nil {
		return fail(err)
	}
	if mode == killAfterCommit {
		in.afterCommit = die
	}
	return fail(in.Consume(ctx, deliveries))
}
