package outbox

// Event is one message to publish: one row of the outbox table. The relay
// publishes it to RabbitMQ after the transaction that wrote it commits.
//
// Text fields must be valid UTF-8 without NUL bytes (PostgreSQL text cannot
// hold them). Fields that become AMQP short strings (Exchange, RoutingKey,
// EventType, ContentType and header names) are limited to 255 bytes, and
// the headers, with the aggregate type and id the relay adds to them, must
// fit in one AMQP frame with the other properties (131072 bytes, RabbitMQ's
// default frame size), so an event that RabbitMQ could never accept is
// refused here instead of being parked as dead by the relay.
type Event struct {
	// AggregateType fills the aggregate_type column: the kind of entity the
	// event is about, e.g. "order". Required. Published as the
	// aggregate_type header.
	AggregateType string

	// AggregateID fills the aggregate_id column: which entity of that kind.
	// Required. Events of one (AggregateType, AggregateID) are published in
	// order; see the package documentation for the exact guarantee. Published
	// as the aggregate_id header.
	AggregateID string

	// EventType fills the event_type column, e.g. "OrderPlaced". Required.
	// Published as the AMQP type property.
	EventType string

	// Exchange fills the exchange column: the exchange to publish to. Empty
	// stores NULL, which means the relay's RELAY_EXCHANGE. (To publish to
	// RabbitMQ's default exchange "", leave it empty and run the relay with
	// RELAY_EXCHANGE unset.)
	Exchange string

	// RoutingKey fills the routing_key column: the AMQP routing key.
	// Required.
	RoutingKey string

	// Payload fills the payload column: the message body, published byte for
	// byte. A nil Payload is stored and published as an empty body (the
	// column is NOT NULL). See [JSON] for encoding a value as JSON.
	Payload []byte

	// ContentType fills the content_type column: the AMQP content_type
	// property. Empty stores "application/json", the column's default.
	ContentType string

	// Headers fills the headers column: each entry becomes an AMQP header.
	// Values must be strings, booleans or numbers (any Go int, uint or float
	// kind, including named types of those kinds; NaN and infinities are
	// refused). Names must be non-empty and must not be aggregate_type,
	// aggregate_id or outbox_id, which the relay sets itself. Nil or empty
	// stores the empty object.
	Headers map[string]any

	// EventID fills the event_id column: the AMQP message_id that consumers
	// deduplicate on. Empty lets the database generate a random UUID, which
	// is right for almost every event. Set it, as a UUID in the canonical
	// 36-character form (either case), when the ID must be known before the
	// insert or derived from the event's content; it is unique in the table,
	// so writing the same EventID twice fails with a unique violation.
	EventID string
}
