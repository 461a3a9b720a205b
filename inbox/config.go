package inbox

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/retry"
	"github.com/outboxrelay/outboxrelay/internal/sqlname"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// DefaultTable is the inbox table used when [Config.Table] is empty: inbox,
// in the first schema of search_path, as schema.sql creates it. Its attempts
// table is inbox_attempts.
const DefaultTable = "inbox"

// DefaultMaxAttempts is the number of attempts used when
// [Config.MaxAttempts] is zero.
const DefaultMaxAttempts = 5

// attemptsSuffix names the attempts table after the inbox table, so one
// setting names both and they cannot be paired up wrongly.
const attemptsSuffix = "_attempts"

// Config configures an [Inbox]. Consumer and Handler are required; the other
// fields have defaults.
type Config struct {
	// Consumer names the consumer: inbox rows are kept per (Consumer,
	// message_id), so two consumers of one message (two queues bound to one
	// exchange, say) each process it once. Keep it stable across deploys:
	// a renamed consumer no longer sees the rows of its old name and would
	// process duplicates of old messages again.
	Consumer string

	// Handler applies a message's effects on the transaction it is given.
	Handler Handler

	// Table is the inbox table, "name" or "schema.name"; empty means
	// [DefaultTable]. The attempts table is the same name with the suffix
	// _attempts, in the same schema. Each part is a plain identifier of at
	// most 63 bytes (54 for the table name, to leave room for the suffix),
	// quoted and therefore case-sensitive.
	Table string

	// MaxAttempts is how many times the handler may fail on one message
	// before the message is rejected without requeue (dead-lettered when the
	// queue has a dead-letter exchange). 1 means no retries. Zero means
	// [DefaultMaxAttempts].
	MaxAttempts int

	// Backoff returns how long to hold a message whose attempt number
	// attempt (1 for the first) failed, before requeueing it. Nil means
	// 250 ms doubling with each attempt, at most 10 s. The delay is spent
	// holding the delivery, so [Inbox.Consume] handles nothing else
	// meanwhile; return 0 to requeue at once.
	Backoff func(attempt int) time.Duration

	// Locks, if set, names the aggregates whose outbox events the handler
	// may write for a message (the message's Attempt is not known yet when
	// it is called: 0). The inbox takes their ordering locks (schema.sql's
	// outbox_lock, through search_path) at the start of the message's
	// transaction, before its own first write, so that the relay publishes
	// those events in commit order; the handler's tx is then an
	// [outbox.Tx], on which outbox.Write refuses events of other
	// aggregates. Nil takes none: events the handler writes are then
	// ordered only as the outbox package says of unlocked writers.
	Locks func(msg Message) []outbox.Aggregate

	// OnDuplicate, if set, is called with the message id of each delivery
	// that was acked without running the handler because the inbox already
	// holds it: a duplicate absorbed. It runs on the goroutine that called
	// Handle, after the ack; keep it fast (count it, log it).
	OnDuplicate func(messageID string)

	// Logger receives what [Inbox.Consume] has to report: messages that
	// were rejected, requeued after a failed attempt, or could not be
	// handled because the database failed. Nil means slog.Default().
	// [Inbox.Handle] never logs; it returns.
	Logger *slog.Logger
}

// ErrInvalidConfig is matched, under errors.Is, by the error [New] returns
// for a configuration it refuses.
var ErrInvalidConfig = errors.New("inbox: invalid config")

// withDefaults returns c with its empty fields set.
func (c Config) withDefaults() Config {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff == nil {
		c.Backoff = defaultBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports the first field of c that [New] would refuse, naming it.
// Empty fields that have defaults are fine.
func (c Config) Validate() error {
	if c.Consumer == "" {
		return fmt.Errorf("%w: Consumer is empty", ErrInvalidConfig)
	}
	if c.Handler == nil {
		return fmt.Errorf("%w: Handler is nil", ErrInvalidConfig)
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("%w: MaxAttempts is %d, want 1 or more (0 for the default)", ErrInvalidConfig, c.MaxAttempts)
	}
	if _, _, err := parseTables(c.Table); err != nil {
		return err
	}
	return nil
}

// defaultBackoff is 250 ms, 500 ms, 1 s, ... up to 10 s.
func defaultBackoff(attempt int) time.Duration {
	return retry.Ceiling(250*time.Millisecond, 10*time.Second, attempt-1)
}

// parseTables turns Table ("name" or "schema.name"; empty for the default)
// into the quoted names of the inbox table and of its attempts table.
func parseTables(table string) (inboxTable, attemptsTable string, err error) {
	if table == "" {
		table = DefaultTable
	}
	n, err := sqlname.Parse(table, sqlname.MaxIdentifier-len(attemptsSuffix))
	if err != nil {
		return "", "", fmt.Errorf("%w: Table %w", ErrInvalidConfig, err)
	}
	return n.Quoted(), n.Sibling(n.Name + attemptsSuffix), nil
}
