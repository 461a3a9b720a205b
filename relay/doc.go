// Package relay is the publishing core of outbox-relay: it reads committed
// outbox rows after the recorded position, publishes them to the broker with
// publisher confirms, and records the new position once a contiguous prefix
// of them is confirmed.
//
// The core speaks to PostgreSQL and RabbitMQ only through the small Store and
// Publisher interfaces declared here; the adapters in relay/postgres and
// relay/rabbitmq implement them.
//
// Guarantees, given adapters that keep their contracts:
//
//   - No loss: the recorded position only ever covers rows whose messages
//     the broker confirmed, and every round reads from the recorded position,
//     so a crash at any instant leaves every unconfirmed row to be read again.
//   - Order: rows are published in (transaction id, id) order on one
//     channel, and after any failure publishing restarts from the first row
//     that is not confirmed.
//   - Bounded duplicates: a crash or a failed round can republish at most one
//     batch (the in-flight window), each message with its stable message id.
//   - Bounded memory: at most one batch of rows is held at a time.
package relay
