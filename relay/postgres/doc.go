// Package postgres is the relay's PostgreSQL adapter: it reads committed
// outbox rows in (transaction id, id) order, records the published position,
// reports status, and listens for the optional wake-up notifications.
//
// Reading is gap-free: a row is read only once its writer's transaction id is
// below the xmin of the reader's snapshot, that is, once every transaction
// that could still commit a row before it has finished. Rows that commit out
// of id order therefore never fall behind the cursor. The price is latency,
// never loss: a long-running transaction anywhere in the cluster holds
// publishing back until it ends (Status reports it).
package postgres
