package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Status describes the outbox for `outbox-relay status`.
type Status struct {
	Table                   string    `json:"table"`
	Position                string    `json:"position"`
	PositionUpdatedAt       time.Time `json:"position_updated_at"`
	Pending                 int64     `json:"pending"`
	Dead                    int64     `json:"dead"`
	Parked                  int64     `json:"parked"`          // rejected rows waiting for a retry, not yet dead
	DeadAggregates          int64     `json:"dead_aggregates"` // aggregates with dead rows: held back under RELAY_DEAD_ROWS=hold
	OldestPendingAgeSeconds float64   `json:"oldest_pending_age_seconds"`
	Leader                  string    `json:"leader"`                  // replica holding the lease; empty if none
	LeaderState             string    `json:"leader_state"`            // what the leader reported at its last renewal
	LeaseRemainingSeconds   float64   `json:"lease_remaining_seconds"` // until the lease lapses; negative once lapsed
	Epoch                   int64     `json:"epoch"`                   // lease epoch (fencing token)
	OldestXact              *Xact     `json:"oldest_transaction,omitempty"`
	// ReadCursor and OpenTransactions: the poll source read past
	// transactions still running (docs/design.md, "Reading without gaps"):
	// every row up to ReadCursor is published except those
	// OpenTransactions' rows, and Position waits at the oldest of them.
	// Empty and 0 when none was running at the last position write.
	ReadCursor       string `json:"read_cursor,omitempty"`
	OpenTransactions int    `json:"open_transactions"`
	Slot             *Slot  `json:"slot,omitempty"` // the logical source's
	// PartitionCount is how many partitions share the table's work
	// (RELAY_PARTITIONS); 1 when one replica publishes it all. With more,
	// Position is the prefix every partition has published, Pending and
	// OldestPendingAgeSeconds add up the partitions', Leader is empty,
	// and Partitions has each one's holder and lag.
	PartitionCount int         `json:"partition_count"`
	Partitions     []Partition `json:"partitions,omitempty"`
}

// Partition is one partition of a table whose work replicas share.
type Partition struct {
	Partition               int     `json:"partition"`
	Holder                  string  `json:"holder"` // empty if none
	HolderState             string  `json:"holder_state"`
	LeaseRemainingSeconds   float64 `json:"lease_remaining_seconds"` // negative once lapsed
	Epoch                   int64   `json:"epoch"`
	Position                string  `json:"position"`
	Pending                 int64   `json:"pending"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
}

// Slot is the logical source's replication slot.
type Slot struct {
	Name         string `json:"name"`
	Exists       bool   `json:"exists"`
	Active       bool   `json:"active"`        // a relay reads it now
	ConfirmedLSN string `json:"confirmed_lsn"` // what the relay confirmed last
	// RetainedWALBytes is the WAL the server keeps for the slot: what a
	// relay that is down or stuck costs the server's disk.
	RetainedWALBytes int64  `json:"retained_wal_bytes"`
	WALStatus        string `json:"wal_status"` // reserved, extended, unreserved or lost
}

// Xact is the oldest running (or prepared) transaction that holds a
// transaction id. While it runs, rows of younger transactions wait.
type Xact struct {
	PID        int32   `json:"pid"` // 0 for a prepared transaction
	Database   string  `json:"database"`
	AgeSeconds float64 `json:"age_seconds"`
	Prepared   bool    `json:"prepared"`
}

// Status reports pending and dead rows, the age of the oldest pending row,
// the leader, and the oldest running transaction.
func (a *Admin) Status(ctx context.Context) (Status, error) {
	key, err := a.resolve(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{Table: key, Position: "none", PartitionCount: 1}
	var pos relay.Position
	var cursor relay.Position
	var ahead bool
	err = a.pool.QueryRow(ctx, a.q.status, key).Scan(&pos.TxID, &pos.ID, &st.PositionUpdatedAt, &st.Epoch, &st.Leader, &st.LeaderState,
		&st.LeaseRemainingSeconds, &st.Pending, &st.OldestPendingAgeSeconds, &ahead, &cursor.TxID, &cursor.ID, &st.OpenTransactions)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// The relay never started on this table: everything is pending.
		err = a.pool.QueryRow(ctx, a.q.pendingAll).Scan(&st.Pending, &st.OldestPendingAgeSeconds)
		if err != nil {
			return Status{}, fmt.Errorf("count pending rows: %w", err)
		}
	case err != nil:
		return Status{}, fmt.Errorf("read position: %w", err)
	default:
		st.Position = pos.String()
		if ahead {
			st.ReadCursor = cursor.String()
		} else {
			st.OpenTransactions = 0
		}
		if err := a.partitionStatus(ctx, key, &st); err != nil {
			return Status{}, err
		}
	}
	if err := a.pool.QueryRow(ctx, a.q.deadCount, key).Scan(&st.Dead, &st.Parked, &st.DeadAggregates); err != nil {
		return Status{}, fmt.Errorf("count dead rows: %w", err)
	}
	if a.logical {
		if st.Slot, err = a.slotStatus(ctx, key); err != nil {
			return Status{}, err
		}
	}
	var x Xact
	err = a.pool.QueryRow(ctx, a.q.blocker).Scan(&x.PID, &x.Database, &x.AgeSeconds, &x.Prepared)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Status{}, fmt.Errorf("find oldest transaction: %w", err)
	default:
		st.OldestXact = &x
	}
	return st, nil
}

// slotStatus describes the logical source's slot of the outbox key.
func (a *Admin) slotStatus(ctx context.Context, key string) (*Slot, error) {
	slot, _ := logicalNames(a.slot, "", a.pool.Config().ConnConfig.Database, key)
	sl := &Slot{Name: slot}
	err := a.pool.QueryRow(ctx, slotStatusQuery, slot).Scan(&sl.Active, &sl.ConfirmedLSN, &sl.RetainedWALBytes, &sl.WALStatus)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return sl, nil
	case err != nil:
		return nil, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	sl.Exists = true
	return sl, nil
}

// partitionStatus fills in the partitions of a table whose work replicas
// share: each one's lease, position and pending rows.
func (a *Admin) partitionStatus(ctx context.Context, key string, st *Status) error {
	if err := a.pool.QueryRow(ctx, a.q.partitionCount, key).Scan(&st.PartitionCount); err != nil {
		return fmt.Errorf("read partitions: %w", err)
	}
	if st.PartitionCount <= 1 {
		return nil
	}
	rows, err := a.pool.Query(ctx, a.q.partitionStatus, key, st.PartitionCount)
	if err != nil {
		return fmt.Errorf("read partitions: %w", err)
	}
	defer rows.Close()
	st.Leader, st.LeaderState, st.LeaseRemainingSeconds, st.Epoch = "", "", 0, 0
	st.Pending, st.OldestPendingAgeSeconds = 0, 0
	for rows.Next() {
		var p Partition
		var pos relay.Position
		if err := rows.Scan(&p.Partition, &pos.TxID, &pos.ID, &p.Epoch, &p.Holder, &p.HolderState, &p.LeaseRemainingSeconds,
			&p.Pending, &p.OldestPendingAgeSeconds); err != nil {
			return fmt.Errorf("read partitions: %w", err)
		}
		p.Position = pos.String()
		st.Pending += p.Pending
		st.OldestPendingAgeSeconds = max(st.OldestPendingAgeSeconds, p.OldestPendingAgeSeconds)
		st.Partitions = append(st.Partitions, p)
	}
	return rows.Err()
}
