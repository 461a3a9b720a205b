// Package postgres is the relay's PostgreSQL adapter. It has two sides:
//
//   - Store is the relay's port (it implements relay.Store): it reads
//     committed outbox rows in (transaction id, id) order, holds the lease
//     and the replica's name, records the published position and parks the
//     rows the broker rejects. Beside it run the leader's services: the
//     wake-up Listener and Retention, which deletes published rows.
//   - Admin is the operator's side: status, dead rows (list, retry, drop),
//     the hold-up probe and its HoldUpWatcher, and the reads of a replay
//     (package relay/replay publishes them). It holds no lease. OpenAdmin
//     gives it a pool of its own; Store.Admin shares the store's.
//
// With Config.Source SourceLogical, the Store reads the table's inserts from
// a replication slot instead (logical.go: the stream; logical_row.go: its
// rows; logical_store.go: its checks and names), in commit order, and
// records the commit LSN as its position; SetUpLogical (logical_setup.go)
// creates the publication and the slot.
//
// With Config.Partitions above 1, replicas share the table's work
// (partition.go): each holds a share of the partitions of its aggregates,
// with a lease and a position each; SetPartitions (partition_setup.go)
// changes their number.
//
// Migrate applies the schema. The SQL of each side is in one place:
// queries.go for the port, admin_queries.go for the operator,
// logical_queries.go for what only the logical source asks,
// partition_queries.go for what only shared work asks.
//
// Reading is gap-free. The poll source reads an unpartitioned table past
// running transactions (ahead.go): a row is read as soon as its own
// transaction has committed; the transactions that were still running
// when the read passed their ids are kept open and their rows read when
// they commit, and the recorded (txid, id) position stays below the oldest
// of them, with the cursor and the open ones recorded beside it. A shared
// (partitioned) table is read only below the xmin of the reader's
// snapshot, once every transaction that could still commit a row before a
// row has finished: a long-running transaction anywhere in the cluster
// holds its publishing back until it ends (Admin.HeldBack reports it).
package postgres
