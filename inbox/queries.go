package inbox

import "fmt"

// queries are the statements of one Inbox, for its two tables (quoted).
// Every statement is keyed by (consumer, message_id), the primary key of
// both tables, except the pruning deletes, which are noted.
type queries struct {
	claim, countAttempt, clearAttempts, pruneInbox, pruneAttempts string
}

func newQueries(inboxTable, attemptsTable string) queries {
	return queries{
		// claim runs first in the handler's transaction. The insert is the
		// deduplication: it inserts nothing (first column false) when the
		// message was processed already, and a concurrent claim of the same
		// message waits on the primary key until this transaction ends, so
		// two copies never both run. The second column is the number of
		// attempts recorded for the message so far.
		claim: fmt.Sprintf(`WITH claimed AS (
    INSERT INTO %[1]s (consumer, message_id) VALUES ($1, $2::uuid)
    ON CONFLICT (consumer, message_id) DO NOTHING
    RETURNING true
)
SELECT EXISTS (SELECT FROM claimed),
       coalesce((SELECT attempts FROM %[2]s WHERE consumer = $1 AND message_id = $2::uuid), 0)`,
			inboxTable, attemptsTable),

		// countAttempt adds $3 to the attempts of a message not yet
		// processed, records $4 as its last error unless NULL, and returns
		// the new count. It runs outside the handler's transaction, so the
		// count survives the rollback of a failed attempt. A message already
		// processed returns no row and gets no attempts row.
		countAttempt: fmt.Sprintf(`INSERT INTO %[2]s AS a (consumer, message_id, attempts, last_error)
SELECT $1, $2::uuid, $3, $4
WHERE NOT EXISTS (SELECT FROM %[1]s WHERE consumer = $1 AND message_id = $2::uuid)
ON CONFLICT (consumer, message_id) DO UPDATE
    SET attempts = a.attempts + excluded.attempts,
        last_error = coalesce(excluded.last_error, a.last_error),
        updated_at = now()
RETURNING a.attempts`, inboxTable, attemptsTable),

		// clearAttempts forgets a message's attempts: in the transaction of
		// its successful attempt, or when it is dead-lettered, so that a
		// message moved back from the dead-letter queue starts afresh.
		clearAttempts: fmt.Sprintf(`DELETE FROM %s WHERE consumer = $1 AND message_id = $2::uuid`, attemptsTable),

		// pruneInbox deletes up to $3 processed rows of consumer $1 older
		// than $2 seconds. Index: <table>_processed_at_idx (consumer,
		// processed_at) finds them; the primary key deletes them.
		pruneInbox: fmt.Sprintf(`DELETE FROM %[1]s
WHERE (consumer, message_id) IN (
    SELECT consumer, message_id FROM %[1]s
    WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)
    LIMIT $3
)`, inboxTable),

		// pruneAttempts deletes attempts rows of consumer $1 untouched for
		// $2 seconds: left behind by messages that vanished while being
		// retried (a purged queue, an expired message). The table holds only
		// messages being retried, so it is small and read without an index
		// on updated_at.
		pruneAttempts: fmt.Sprintf(`DELETE FROM %s
WHERE consumer = $1 AND updated_at < now() - make_interval(secs => $2)`, attemptsTable),
	}
}
