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
//	order := outbox.Aggregate{Type: "order", ID: strconv.FormatInt(id, 10)}
//	tx, err := outbox.Begin(ctx, pool, order) // takes the order's ordering lock
//	if err != nil {
//		return err
//	}
//	defer tx.Rollback(ctx)
//	if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1`, id); err != nil {
//		return err
//	}
//	payload, err := outbox.JSON(OrderPaid{ID: id})
//	if err != nil {
//		return err
//	}
//	err = outbox.Write(ctx, tx, outbox.Event{
//		AggregateType: order.Type,
//		AggregateID:   order.ID,
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
// The relay publishes rows in the order of the writing transaction's id,
// then the row id, so several events written by one transaction keep the
// order in which they were passed to Write. PostgreSQL assigns a
// transaction its id at its first write, and UPDATE and SELECT ... FOR
// UPDATE take it before they wait for a row lock: a row lock alone does not
// make ids follow commit order, and concurrent writers of one aggregate that
// rely on it get some events published out of commit order.
//
// For commit order, take the aggregate's ordering lock before the
// transaction's first write: [Begin] does it together with BEGIN, [Lock] on
// a transaction that has not written yet (it fails with [ErrLockAfterWrite]
// otherwise), and schema.sql's outbox_lock function in plain SQL. The lock
// is a transaction-level advisory lock, which assigns no transaction id;
// the next transaction of the aggregate waits for it and gets a larger id.
// Lock every aggregate of a transaction in one call: they are locked in a
// fixed order, so transactions locking overlapping sets cannot deadlock.
// Writes on the [*Tx] that Begin and Lock return refuse events of other
// aggregates with [ErrNotLocked].
//
// Each row records the locks its transaction took, and the relay counts
// (outbox_relay_unlocked_rows_total) and logs the rows written without
// their aggregate's lock, whose order it cannot vouch for. Drawing a new
// aggregate's id from a sequence may itself assign the transaction its id:
// draw it before BEGIN.
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
