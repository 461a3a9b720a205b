package inbox

import (
	"context"
	"fmt"
	"time"
)

// pruneBatch bounds the rows one pruning statement deletes, so that pruning
// a large backlog holds no long locks and leaves vacuum small steps.
const pruneBatch = 1000

// Prune deletes this consumer's inbox rows processed more than olderThan
// ago (by the database's clock), in batches of at most 1000 rows, each its
// own statement, and returns how many it deleted. It also deletes attempts
// rows untouched for olderThan, left behind by messages that disappeared
// while being retried. Run it periodically, from one process or many.
//
// An inbox row is what makes a late copy of its message a duplicate: once
// it is gone, a copy of the message runs its effects again. Keep rows at
// least as long as a copy can still arrive: the outbox retention
// (RELAY_RETENTION, default 168h, since `outbox-relay replay` republishes
// anything still in the outbox) plus the longest outage of the broker or of
// this consumer you want to survive (messages wait in the queue meanwhile),
// plus how long you keep messages in dead-letter queues to move them back.
//
// olderThan must be positive. If ctx ends between batches, Prune returns
// what it deleted so far with ctx's error.
func (in *Inbox) Prune(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, fmt.Errorf("inbox: prune: olderThan is %v, want more than 0", olderThan)
	}
	secs := olderThan.Seconds()
	var deleted int64
	for {
		tag, err := in.pool.Exec(ctx, in.q.pruneInbox, in.cfg.Consumer, secs, pruneBatch)
		if err != nil {
			return deleted, fmt.Errorf("inbox: prune inbox: %w", err)
		}
		deleted += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			break
		}
	}
	if _, err := in.pool.Exec(ctx, in.q.pruneAttempts, in.cfg.Consumer, secs); err != nil {
		return deleted, fmt.Errorf("inbox: prune attempts: %w", err)
	}
	return deleted, nil
}
