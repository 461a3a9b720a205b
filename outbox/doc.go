// Package outbox writes events into the transactional outbox table that
// outbox-relay publishes to RabbitMQ.
//
// # The pattern
//
// A service that changes its state and must tell the world about it does both
// in ONE database transaction: it updates its own tables and inserts the event
// rows with [Write] (or [Writer.Write], [Writer.WriteSQL]) on the same
// transaction. If the transaction commits, the relay publishes every event row
// it inserted; if it rolls back, no event is ever published. There is no
// window in which the state changed but the event is lost, or the event went
// out for a change that never happened.
//
//	tx, err := pool.Begin(ctx)
//	if err != nil {
//		return err
//	}
//	defer tx.Rollback(ctx)
//	// Lock the aggregate with the transaction's first write (see Ordering).
//	if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1`, id); err != nil {
//		return err
//	}
//	payload, err := outbox.JSON(OrderPaid{ID: id})
//	if err != nil {
//		return err
//	}
//	err = outbox.Write(ctx, tx, outbox.Event{
//		AggregateType: "order",
//		AggregateID:   strconv.FormatInt(id, 10),
//		EventType:     "OrderPaid",
//		RoutingKey:    "orders.paid",
//		Payload:       payload,
//	})
//	if err != nil {
//		return err
//	}
//	return tx.Commit(ctx)
//
// The writer only inserts rows; it never commits, never retries and never
// logs. Any number of events are written by one INSERT statement in one
// round trip, and writing no events does not touch the database. Events are
// validated before anything is sent: a [*ValidationError] (which matches
// [ErrInvalidEvent] under errors.Is) names the event's index and field.
//
// # Ordering
//
// The relay publishes the events of one aggregate (AggregateType,
// AggregateID) in the order of the writing transaction's id, then the row id;
// several events written by one transaction therefore keep the order in which
// they were passed to Write. PostgreSQL assigns a transaction its id at the
// transaction's first write (not at BEGIN, not at the outbox insert), so this
// order equals commit order only when
//
//   - writes to one aggregate are serialized (two transactions that change the
//     same aggregate never run concurrently), and
//   - the transaction's first write is the one that locks the aggregate, for
//     example `UPDATE orders ... WHERE id = $1` or `SELECT ... FOR UPDATE`
//     (which takes the row lock and assigns the id), and only after it the
//     outbox insert.
//
// Counter-example: a transaction that first writes an unrelated row (an audit
// log, say), then waits for the aggregate's row lock, already holds a
// transaction id older than that of the transaction it is waiting for; it
// commits second but its event is published first. Take the aggregate's lock
// first, and hold it until commit.
//
// # Drivers
//
// [Writer.Write] takes anything with pgx's Exec method: pgx.Tx,
// *pgx.Conn, *pgxpool.Pool and *pgxpool.Conn. [Writer.WriteSQL] takes
// database/sql's *sql.Tx, *sql.Conn or *sql.DB opened with the pgx driver
// (github.com/jackc/pgx/v5/stdlib); other database/sql drivers are not
// supported, because the statement passes its columns as PostgreSQL arrays.
// Both work with every pgx query execution mode, including the simple
// protocol used behind PgBouncer.
//
// Plain SQL works too, from any language: the writer-facing columns of the
// outbox table are a public interface, described in schema.sql.
//
// # Tracing
//
// A W3C trace context travels from the writer to the consumer as the
// headers traceparent and tracestate, which the relay publishes as AMQP
// headers. The package does not depend on a tracing library: set
// [Writer.TraceContext] to ask one (OpenTelemetry's
// propagation.TraceContext, say) for the context of a Write's ctx, or pass a
// ctx from [ContextWithTraceParent]. A malformed trace context is left out
// and never fails a write; headers the caller sets explicitly win.
package outbox
