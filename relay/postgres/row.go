package postgres

import (
	"encoding/hex"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// rowColumns are the columns of an outbox row aliased o, in the order
// scanRow takes them. None is cast to text: txid comes as a number and
// event_id as 16 bytes (binary, except in pgx's exec and simple protocol
// modes), and headers as jsonb's own text, which spares PostgreSQL a
// conversion per column and row (about a fifth of its CPU for a read).
const rowColumns = `o.id, o.txid, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type,
       o.exchange, o.routing_key, o.payload, o.content_type, o.headers, o.created_at`

// readColumns are rowColumns for the relay's read: a payload larger than
// $4 bytes (unless $4 is 0) is left out, so that one huge row is never
// loaded into memory. octet_length does not detoast a payload to measure it.
var readColumns = strings.Replace(rowColumns, "o.payload",
	"CASE WHEN $4::int = 0 OR octet_length(o.payload) <= $4::int THEN o.payload END AS payload", 1)

// scanRow scans the current row: first into lead, then rowColumns.
func scanRow(rows pgx.Row, lead ...any) (relay.Row, error) {
	var r relay.Row
	var eventID [16]byte
	dest := append(lead, &r.ID, &r.TxID, &eventID, &r.AggregateType, &r.AggregateID, &r.EventType,
		&r.Exchange, &r.RoutingKey, &r.Payload, &r.ContentType, &r.Headers, timestamp{&r.CreatedAt})
	if err := rows.Scan(dest...); err != nil {
		return relay.Row{}, err
	}
	r.EventID = uuidText(eventID)
	return r, nil
}

// uuidText formats a UUID as PostgreSQL prints it: lower-case hex in
// groups of 8, 4, 4, 4 and 12 digits.
func uuidText(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}
