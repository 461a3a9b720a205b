package outbox

import "fmt"

// insertSQL returns the one statement that writes any number of events to
// table (already quoted). Its text does not depend on the number of events:
// each column travels as one array parameter and unnest turns the arrays
// back into rows, so pgx's statement cache serves every batch size with one
// prepared statement and one round trip.
//
// Every array is text or bytea, cast to the column types here rather than
// encoded by the driver, so the statement behaves the same through pgx and
// through database/sql, in every query execution mode. Empty strings stand
// for "not set": exchange becomes NULL, content_type and event_id get the
// column defaults of schema.sql. (INSERT ... SELECT cannot say DEFAULT, so
// the content_type default is repeated here.)
//
// WITH ORDINALITY and ORDER BY make the row ids, and so the relay's order
// within one transaction, follow the order of the events passed to Write.
// No index is read; the insert maintains outbox_pkey (txid, id) and the
// event_id unique index.
func insertSQL(table string) string {
	return fmt.Sprintf(`INSERT INTO %s
    (event_id, aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, content_type, headers)
SELECT coalesce(nullif(e.event_id, '')::uuid, gen_random_uuid()),
       e.aggregate_type, e.aggregate_id, e.event_type,
       nullif(e.exchange, ''),
       e.routing_key, e.payload,
       coalesce(nullif(e.content_type, ''), 'application/json'),
       e.headers::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[])
    WITH ORDINALITY AS e(event_id, aggregate_type, aggregate_id, event_type, exchange, routing_key, payload, content_type, headers, n)
ORDER BY e.n`, table)
}

// columns holds the events of one Write as one array per column, in the
// order of insertSQL's parameters.
type columns struct {
	eventID, aggregateType, aggregateID, eventType, exchange, routingKey []string
	payload                                                              [][]byte
	contentType, headers                                                 []string
}

// toColumns validates events and lays them out as insertSQL's arguments.
func toColumns(events []Event) ([]any, error) {
	n := len(events)
	c := columns{
		eventID: make([]string, n), aggregateType: make([]string, n), aggregateID: make([]string, n),
		eventType: make([]string, n), exchange: make([]string, n), routingKey: make([]string, n),
		payload: make([][]byte, n), contentType: make([]string, n), headers: make([]string, n),
	}
	for i := range events {
		e := &events[i]
		headers, err := validate(i, e)
		if err != nil {
			return nil, err
		}
		payload := e.Payload
		if payload == nil {
			payload = []byte{} // a nil element would be a NULL in the array
		}
		c.eventID[i], c.aggregateType[i], c.aggregateID[i] = e.EventID, e.AggregateType, e.AggregateID
		c.eventType[i], c.exchange[i], c.routingKey[i] = e.EventType, e.Exchange, e.RoutingKey
		c.payload[i], c.contentType[i], c.headers[i] = payload, e.ContentType, headers
	}
	return []any{c.eventID, c.aggregateType, c.aggregateID, c.eventType, c.exchange,
		c.routingKey, c.payload, c.contentType, c.headers}, nil
}
