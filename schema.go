// Package outboxrelay holds the outbox schema shared by the relay, the
// writer library and the tests. The code lives in its subpackages: relay (the
// publishing core), outbox (the writer library), inbox (the consumer library)
// and cmd/outbox-relay.
package outboxrelay

import _ "embed"

// Schema is the text of schema.sql: the outbox table and its index, the
// relay's position and parked-row tables, the optional wake-up trigger
// function, and the inbox tables of package inbox. It is idempotent, so
// applying it to a database that already has it changes nothing.
//
//go:embed schema.sql
var Schema string
