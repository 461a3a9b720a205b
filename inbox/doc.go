// Package inbox makes a Go consumer of RabbitMQ (amqp091-go) process each
// message's database effects exactly once, although the message itself may
// arrive more than once.
//
// # Why messages arrive twice
//
// outbox-relay publishes each outbox row once in normal operation, but after
// a fault (a crash or a lost connection between the broker's confirm and the
// relay recording it) it publishes the row again, with the same AMQP
// message_id, the row's event_id. `outbox-relay replay` republishes rows on
// purpose. And a consumer that dies after committing its work but before
// acking the message gets it again from the broker.
//
// # The guarantee
//
// For each delivery, [Inbox.Handle] begins a transaction and inserts the
// pair (consumer name, message_id) into the inbox table. If the pair is
// there already, the message was processed: the handler does not run and
// the delivery is acked. Otherwise the [Handler] runs on that same
// transaction, which then commits, and only after the commit is the
// delivery acked. The inbox row and the handler's writes commit or roll back
// together, so for every message (per consumer name) the handler's
// transaction commits at most once, and, as long as the message reaches the
// consumer and its handler succeeds within [Config.MaxAttempts], exactly
// once. Copies running at the same time in several processes are safe: the
// second waits on the inbox row's primary key and then sees it.
//
// # The limits
//
//   - Only effects made on the handler's transaction are exactly-once. An
//     HTTP call, an e-mail, a write to another database or a message
//     published directly to RabbitMQ happens again on every retry and on
//     every copy. For messages to publish, write them to an outbox table on
//     the same transaction (package outbox) and let a relay publish them.
//   - Deduplication lasts as long as the inbox row: pruning it early lets a
//     late copy run again (see [Inbox.Prune] for how long to keep rows).
//   - Deduplication is per consumer name ([Config.Consumer]); renaming a
//     consumer forgets what it processed.
//   - A message without a message_id, or with one that is not a UUID,
//     cannot be deduplicated and is never processed: it is rejected.
//
// # Failures
//
// A handler error (or panic) rolls the transaction back and counts a failed
// attempt in the attempts table (<table>_attempts, default inbox_attempts),
// in a statement of its own, so the count survives the rollback and restarts
// of the consumer and is shared by all its processes. The message is
// requeued after [Config.Backoff] and tried again. The [Config.MaxAttempts]th
// failure rejects it without requeue (basic.nack, requeue=false): RabbitMQ
// routes it to the queue's dead-letter exchange, or, if the queue has none,
// drops it. A failed message is never acked as if done. Give every consumed
// queue a dead-letter exchange, by queue argument:
//
//	ch.QueueDeclare("billing", true, false, false, false, amqp.Table{
//		"x-dead-letter-exchange": "billing.dlx",
//	})
//
// or by policy, which can be changed later without redeclaring the queue:
//
//	rabbitmqctl set_policy billing-dlx '^billing$' '{"dead-letter-exchange":"billing.dlx"}' --apply-to queues
//
// and bind a queue to that exchange to keep the rejected messages.
//
// Why a counter in the database and not the alternatives: retrying inside
// the process forgets its count when the process dies, and a message that
// kills its consumer would loop forever; the x-delivery-count header exists
// only on quorum queues, and also counts deliveries that were never
// attempted (returned when a channel closed with prefetched messages). The
// counter counts attempts that ran: a failure is counted after its rollback;
// a redelivered message's attempt is counted before it runs, so that an
// attempt that kills the process counts too (on a first delivery that write
// is skipped, to keep the common path to one commit; so a message that kills
// its consumer every time runs at most MaxAttempts+1 times). A message that
// is dead-lettered has its count cleared, so that moving it back from the
// dead-letter queue gives it a full set of attempts. A quorum queue's
// delivery limit (x-delivery-limit) is a broker-side backstop; if you set
// one, set it above MaxAttempts.
//
// When the database fails (no connection, a commit with unknown outcome),
// the failure is not counted against the message (a redelivered message
// keeps the count it took when its attempt started): the delivery is
// requeued, and [Inbox.Consume] backs off before the next one. If the
// commit did happen, the redelivery finds the inbox row and is acked. The
// same holds when ctx ends during an attempt.
//
// # Tracing
//
// Messages written by the outbox package with a trace context carry the W3C
// traceparent and tracestate headers; [Message.TraceParent] returns them
// for the handler to continue the trace.
//
// # Tables
//
// schema.sql creates inbox and inbox_attempts. For another name, create
// both tables with the same columns (see schema.sql) and set [Config.Table].
package inbox
