package inbox

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// Handler applies the effects of one message. It must make them on tx
// only: the Inbox commits tx together with the record that the message was
// processed, and acks the message after that commit. Effects made anywhere
// else (an HTTP call, a file, another database) are not exactly-once; they
// happen again whenever the attempt fails or a copy of the message runs.
//
// Returning an error (or panicking) rolls tx back and counts a failed
// attempt; the message is retried until [Config.MaxAttempts]. The handler
// must not commit or roll back tx itself.
type Handler func(ctx context.Context, tx pgx.Tx, msg Message) error

// Inbox processes deliveries exactly once per consumer name, for effects
// made in the database transaction it hands to its [Handler]. It holds no
// state of its own between deliveries: one Inbox serves any number of
// goroutines, and any number of processes may share its tables.
type Inbox struct {
	pool *pgxpool.Pool
	cfg  Config
	q    queries

	// afterCommit, if set, runs after the handler's transaction committed
	// and before the ack. Tests use it to crash at the worst moment.
	afterCommit func()
}

// Outcomes of Handle other than nil, for errors.Is.
var (
	// ErrRejected is matched by the error of a delivery that was rejected
	// without requeue: one without a usable message_id ([ErrMessageID]), or
	// one whose handler failed [Config.MaxAttempts] times (the error wraps
	// the last failure too). RabbitMQ routes it to the queue's dead-letter
	// exchange, or drops it when the queue has none.
	ErrRejected = errors.New("inbox: rejected without requeue")

	// ErrRequeued is matched by the error of a delivery that was handed
	// back to the broker for another attempt: its handler failed with
	// attempts left (the error wraps the failure), the database failed
	// (also [ErrDatabase]), or ctx ended during the attempt.
	ErrRequeued = errors.New("inbox: requeued")

	// ErrDatabase is matched by the error of a delivery that could not be
	// handled because the database failed: no transaction, a lost
	// connection, a commit whose outcome is unknown. Such attempts are not
	// counted against the message; it is requeued (and matches
	// [ErrRequeued]). If a commit did happen, the redelivery is absorbed.
	ErrDatabase = errors.New("inbox: database failed")
)

// New returns an Inbox that handles deliveries with cfg.Handler in
// transactions on pool. It checks cfg (see [Config.Validate]) but does not
// touch the database: the tables come from schema.sql.
func New(pool *pgxpool.Pool, cfg Config) (*Inbox, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	inboxTable, attemptsTable, _ := parseTables(cfg.Table)
	return &Inbox{pool: pool, cfg: cfg, q: newQueries(inboxTable, attemptsTable)}, nil
}

// Handle processes one delivery and settles it with the broker; the
// delivery must come from a consumer with autoAck off. In order:
//
//  1. A delivery without a UUID message_id is rejected without requeue.
//  2. In one transaction: the (consumer, message_id) row is inserted into
//     the inbox table. If it exists, the message was processed before: the
//     transaction is rolled back and the delivery acked, and the handler
//     does not run.
//  3. Otherwise the handler runs on the same transaction, which then
//     commits, and only after the commit is the delivery acked. A crash
//     between the two leaves the message unacked; the broker redelivers
//     it, and step 2 absorbs the copy.
//  4. A failed attempt is rolled back and counted in the attempts table;
//     the delivery is requeued after [Config.Backoff], or, at the
//     [Config.MaxAttempts]th failure, rejected without requeue.
//
// Handle returns nil when the delivery was acked (processed now or a
// duplicate); otherwise an error matching [ErrRejected] or [ErrRequeued],
// or, when the ack or nack itself failed, the channel's error (a closed
// channel hands its unacked deliveries back to the broker by itself).
func (in *Inbox) Handle(ctx context.Context, d amqp.Delivery) error {
	id, err := parseMessageID(d.MessageId)
	if err != nil {
		return reject(&d, err)
	}

	// A redelivered message may have been attempted before by a consumer
	// that died during the attempt, without a chance to count it. Counting
	// its attempt before it runs bounds a message that kills its consumer
	// (a panic in C code, an out-of-memory kill) by MaxAttempts+1 runs. A
	// first delivery skips this commit: nobody can have attempted it.
	counted, attempt := false, 0
	if d.Redelivered {
		n, processed, err := in.countAttempt(ctx, id, 1, "")
		if err != nil {
			return requeue(&d, err)
		}
		if processed {
			return in.duplicate(&d)
		}
		counted, attempt = true, n
	}

	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return requeue(&d, fmt.Errorf("%w: begin: %w", ErrDatabase, err))
	}
	defer tx.Rollback(ctx) // a no-op after Commit; a failed rollback closes the connection
	if in.cfg.Locks != nil {
		if aggs := in.cfg.Locks(newMessage(&d, id, 0)); len(aggs) > 0 {
			ltx, err := outbox.Lock(ctx, tx, aggs...)
			if err != nil {
				return requeue(&d, fmt.Errorf("%w: take ordering locks: %w", ErrDatabase, err))
			}
			tx = ltx
		}
	}

	var claimed bool
	var recorded int
	if err := tx.QueryRow(ctx, in.q.claim, in.cfg.Consumer, id).Scan(&claimed, &recorded); err != nil {
		return requeue(&d, fmt.Errorf("%w: insert into inbox: %w", ErrDatabase, err))
	}
	if !claimed {
		_ = tx.Rollback(ctx)
		return in.duplicate(&d)
	}
	attempt = recorded
	if !counted {
		attempt++
	}
	if attempt > in.cfg.MaxAttempts {
		// Its attempts ran out before, and the consumer stopped before
		// rejecting it.
		_ = tx.Rollback(ctx)
		return in.deadLetter(ctx, &d, id, fmt.Errorf("attempt %d of %d: no attempts left", attempt, in.cfg.MaxAttempts))
	}

	if err := in.attempt(ctx, tx, newMessage(&d, id, attempt), recorded > 0); err != nil {
		_ = tx.Rollback(ctx)
		return in.failed(ctx, &d, id, attempt, counted, err)
	}
	if in.afterCommit != nil {
		in.afterCommit()
	}
	return ack(&d)
}

// duplicate acks a delivery the inbox already holds and reports it.
func (in *Inbox) duplicate(d *amqp.Delivery) error {
	if err := ack(d); err != nil {
		return err
	}
	if in.cfg.OnDuplicate != nil {
		in.cfg.OnDuplicate(d.MessageId)
	}
	return nil
}

// attempt runs the handler on tx and commits. It returns a plain error for
// a failure of the attempt, and one matching ErrDatabase when the database
// connection failed instead.
func (in *Inbox) attempt(ctx context.Context, tx pgx.Tx, msg Message, clearAttempts bool) error {
	if err := in.runHandler(ctx, tx, msg); err != nil {
		if tx.Conn().IsClosed() {
			return fmt.Errorf("%w: connection lost during the handler: %w", ErrDatabase, err)
		}
		return err
	}
	if clearAttempts {
		if _, err := tx.Exec(ctx, in.q.clearAttempts, in.cfg.Consumer, msg.ID); err != nil {
			return commitError("clear attempts", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return commitError("commit", err)
	}
	return nil
}

// runHandler calls the handler, turning a panic into an error so that it
// counts as a failed attempt instead of killing the consumer every time the
// message comes back.
func (in *Inbox) runHandler(ctx context.Context, tx pgx.Tx, msg Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return in.cfg.Handler(ctx, tx, msg)
}

// commitError tells a transaction that the server refused to commit (a
// deferred constraint, a serialization failure, a statement of the handler
// that failed although the handler returned nil) from one whose connection
// failed. The first is a failed attempt, so that it is counted and cannot
// loop forever; the second is the database's fault, and the commit may even
// have happened.
func commitError(what string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || errors.Is(err, pgx.ErrTxCommitRollback) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrDatabase, what, err)
}

// failed settles a delivery whose attempt number attempt failed with cause.
func (in *Inbox) failed(ctx context.Context, d *amqp.Delivery, id string, attempt int, counted bool, cause error) error {
	if errors.Is(cause, ErrDatabase) || ctx.Err() != nil {
		// Not the message's fault: not counted (beyond the count a
		// redelivery takes up front).
		return requeue(d, cause)
	}
	if attempt >= in.cfg.MaxAttempts {
		return in.deadLetter(ctx, d, id, fmt.Errorf("attempt %d of %d failed: %w", attempt, in.cfg.MaxAttempts, cause))
	}
	increment := 1
	if counted {
		increment = 0 // counted when it started; record the error only
	}
	_, processed, err := in.countAttempt(ctx, id, increment, cause.Error())
	if err != nil {
		return requeue(d, errors.Join(cause, err))
	}
	if processed {
		// A copy of the message, delivered to another consumer process
		// with the same name, succeeded meanwhile.
		return ack(d)
	}
	if wait := in.cfg.Backoff(attempt); wait > 0 {
		sleep(ctx, wait)
	}
	return requeue(d, fmt.Errorf("attempt %d of %d failed: %w", attempt, in.cfg.MaxAttempts, cause))
}

// deadLetter forgets the message's attempts and rejects it without
// requeue. The attempts go first: a crash in between gives the message a
// fresh set of attempts when it comes back, where the other order would
// leave a message moved back from the dead-letter queue with none.
func (in *Inbox) deadLetter(ctx context.Context, d *amqp.Delivery, id string, cause error) error {
	if _, err := in.pool.Exec(ctx, in.q.clearAttempts, in.cfg.Consumer, id); err != nil {
		return requeue(d, errors.Join(cause, fmt.Errorf("%w: clear attempts: %w", ErrDatabase, err)))
	}
	return reject(d, cause)
}

// maxErrorText bounds the last_error recorded for a message, in bytes: a
// panic's stack or a verbose driver error should not bloat the attempts
// table.
const maxErrorText = 2000

// errorText makes a handler's error text storable as last_error. A text
// column refuses NUL bytes and, in a UTF-8 database, bytes that are not
// UTF-8 (an error that quotes binary input, a panic value cut mid-character):
// the write that counts the attempt would fail with it, so the attempt would
// go uncounted and the message would run once more than MaxAttempts. So
// invalid sequences become U+FFFD, NUL bytes go, and the text is cut to
// maxErrorText bytes at a character boundary.
func errorText(s string) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	if len(s) <= maxErrorText {
		return s
	}
	cut := maxErrorText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// countAttempt adds increment to the message's recorded attempts and
// records errText (unless empty) as its last error, in a statement of its
// own that commits at once. It returns the new count, or processed true
// when the message is in the inbox table already (nothing is recorded then).
func (in *Inbox) countAttempt(ctx context.Context, id string, increment int, errText string) (attempts int, processed bool, err error) {
	var lastError *string
	if errText != "" {
		errText = errorText(errText)
		lastError = &errText
	}
	err = in.pool.QueryRow(ctx, in.q.countAttempt, in.cfg.Consumer, id, increment, lastError).Scan(&attempts)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: count attempt: %w", ErrDatabase, err)
	}
	return attempts, false, nil
}

// ack acknowledges d: its effects are committed, or it is a duplicate.
func ack(d *amqp.Delivery) error {
	if err := d.Ack(false); err != nil {
		return fmt.Errorf("inbox: ack message %s: %w", d.MessageId, err)
	}
	return nil
}

// requeue hands d back to the broker for another attempt.
func requeue(d *amqp.Delivery, cause error) error {
	if err := d.Nack(false, true); err != nil {
		return errors.Join(cause, fmt.Errorf("inbox: requeue message %s: %w", d.MessageId, err))
	}
	return fmt.Errorf("%w: message %s: %w", ErrRequeued, d.MessageId, cause)
}

// reject rejects d without requeue: to the dead-letter exchange, if any.
func reject(d *amqp.Delivery, cause error) error {
	if err := d.Nack(false, false); err != nil {
		return errors.Join(cause, fmt.Errorf("inbox: reject message %q: %w", d.MessageId, err))
	}
	return fmt.Errorf("%w: message %q: %w", ErrRejected, d.MessageId, cause)
}
