package postgres

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outboxrelay/outboxrelay/relay"
)

// columns maps the outbox's columns, as a relation message of the
// replication stream lists them, to a row's fields. pgoutput sends each
// value in its type's text format.
type columns struct {
	index map[string]int // column name to its place in a tuple
	types *pgtype.Map
}

// logicalColumns are the columns a row needs.
var logicalColumns = []string{"id", "txid", "event_id", "aggregate_type", "aggregate_id", "event_type",
	"exchange", "routing_key", "payload", "content_type", "headers", "created_at"}

func newColumns(m *pglogrepl.RelationMessage) (*columns, error) {
	c := &columns{index: map[string]int{}, types: pgtype.NewMap()}
	for i, col := range m.Columns {
		c.index[col.Name] = i
	}
	for _, name := range logicalColumns {
		if _, ok := c.index[name]; !ok {
			return nil, fmt.Errorf("the replicated outbox %s.%s has no column %s", m.Namespace, m.RelationName, name)
		}
	}
	return c, nil
}

// row decodes an inserted tuple. A payload larger than maxPayload (unless
// it is 0) is dropped and only its size told, as the poll source's read
// does; it was received whole all the same.
func (c *columns) row(t *pglogrepl.TupleData, maxPayload int) (relay.Row, error) {
	var r relay.Row
	var err error
	text := func(name string) []byte {
		i, ok := c.index[name]
		if !ok || i >= len(t.Columns) || err != nil {
			return nil
		}
		col := t.Columns[i]
		switch col.DataType {
		case pglogrepl.TupleDataTypeText:
			return col.Data
		case pglogrepl.TupleDataTypeNull:
			return nil
		default:
			err = fmt.Errorf("column %s came as %q, not as text", name, col.DataType)
			return nil
		}
	}
	str := func(name string) string { return string(text(name)) }
	r.ID, err = strconv.ParseInt(str("id"), 10, 64)
	if err != nil {
		return relay.Row{}, fmt.Errorf("id: %w", err)
	}
	if r.TxID, err = strconv.ParseUint(str("txid"), 10, 64); err != nil {
		return relay.Row{}, fmt.Errorf("row %d: txid: %w", r.ID, err)
	}
	r.EventID = str("event_id") // PostgreSQL prints a uuid in canonical lower-case form
	r.AggregateType, r.AggregateID, r.EventType = str("aggregate_type"), str("aggregate_id"), str("event_type")
	if ex := text("exchange"); ex != nil {
		s := string(ex)
		r.Exchange = &s
	}
	r.RoutingKey, r.ContentType = str("routing_key"), str("content_type")
	r.Headers = bytes.Clone(text("headers"))
	payload := text("payload") // bytea in hex: \x0a1b...
	if len(payload) < 2 || payload[0] != '\\' || payload[1] != 'x' {
		return relay.Row{}, fmt.Errorf("row %d: payload is not bytea in hex format", r.ID)
	}
	r.PayloadSize = (len(payload) - 2) / 2
	if maxPayload == 0 || r.PayloadSize <= maxPayload {
		r.Payload = make([]byte, r.PayloadSize)
		if _, err := hex.Decode(r.Payload, payload[2:]); err != nil {
			return relay.Row{}, fmt.Errorf("row %d: payload: %w", r.ID, err)
		}
	}
	var created pgtype.Timestamptz
	if err := c.types.Scan(pgtype.TimestamptzOID, pgtype.TextFormatCode, text("created_at"), &created); err != nil {
		return relay.Row{}, fmt.Errorf("row %d: created_at: %w", r.ID, err)
	}
	if err := (timestamp{&r.CreatedAt}).ScanTimestamptz(created); err != nil {
		return relay.Row{}, err
	}
	if err != nil {
		return relay.Row{}, fmt.Errorf("row %d: %w", r.ID, err)
	}
	// Lock stays LockUnknown: commit order needs no writer's lock here.
	return r, nil
}
