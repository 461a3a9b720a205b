// Package rabbitmq is the relay's RabbitMQ adapter: it publishes batches of
// messages on one confirm-mode channel, persistent and mandatory, and reports
// how many leading messages the broker confirmed without returning them.
//
// A message counts as published only when its publisher confirm is an ack
// and no basic.return arrived for it. The broker sends a return before the
// ack of the same message, and the client delivers both from one reader, so
// by the time an ack is seen its return, if any, is already queued.
//
// Connections are opened lazily and replaced after any failure, trying each
// configured URL in turn.
package rabbitmq
