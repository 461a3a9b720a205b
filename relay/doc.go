// Package relay is the publishing core of outbox-relay: it reads committed
// outbox rows after the recorded position, publishes them to the broker with
// publisher confirms, and records the new position once a contiguous prefix
// of them is answered.
//
// The core speaks to PostgreSQL and RabbitMQ only through the Store and
// Publisher interfaces (ports.go); the adapters in relay/postgres and
// relay/rabbitmq implement them, and relay/relaytest has in-memory fakes
// for tests.
//
// Guarantees, given adapters that keep their contracts:
//
//   - No loss: the recorded position only ever covers rows whose messages
//     the broker confirmed, or rows parked in the same transaction, and
//     every term reads from the recorded position, so a crash at any
//     instant leaves every unconfirmed row to be read again.
//   - Order per aggregate: rows are published in (transaction id, id)
//     order, an aggregate's always on the same channel; after a failure
//     publishing restarts from the first row in doubt, and a rejected row
//     holds the later rows of its aggregate back (parking.go).
//   - Bounded duplicates: a crash or a failed round republishes at most the
//     in-flight window, two batches (Config.Window), each message with its
//     stable message id.
//   - Bounded memory: at most two batches are in flight and about two more
//     read ahead, each bounded by BatchSize rows and BatchBytes bytes.
//
// A row's path through the files: readahead.go reads it in the background;
// publish.go turns it into a message (message.go, headers.go) and sends it,
// or sets it aside to park (parking.go); window.go keeps its flight until
// the broker answers; record.go takes the answered prefix of the window and
// poswrite.go records the new position in the background; relay.go runs
// the terms of leadership around all of it (lease.go).
package relay
