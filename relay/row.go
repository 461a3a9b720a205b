package relay

import (
	"fmt"
	"time"
)

// Position is a point in the outbox's publishing order: the writer's
// transaction id and the row id. Every row at or before the recorded position
// has been confirmed by the broker.
type Position struct {
	TxID uint64
	ID   int64
	// LSN is the commit LSN of the row's transaction, set by a store that
	// reads in commit order (PostgreSQL's logical decoding); zero otherwise.
	LSN uint64
	// Ahead is the store's own note of what it read past transactions
	// still running when it reached this point (PostgreSQL's poll source),
	// empty when there is none. The core passes it back to the store
	// unchanged, with the rest of the position.
	Ahead string
}

// row is the position without the store's note: the row's identity.
func (p Position) row() Position { return Position{TxID: p.TxID, ID: p.ID, LSN: p.LSN} }

// After reports whether p comes after q in publishing order.
func (p Position) After(q Position) bool {
	return p.TxID > q.TxID || (p.TxID == q.TxID && p.ID > q.ID)
}

// String formats the position as txid/id, and with the commit LSN as
// PostgreSQL prints it when there is one.
func (p Position) String() string {
	if p.LSN != 0 {
		return fmt.Sprintf("%d/%d@%X/%X", p.TxID, p.ID, p.LSN>>32, uint32(p.LSN))
	}
	return fmt.Sprintf("%d/%d", p.TxID, p.ID)
}

// Row is one committed outbox row, as the Store reads it.
type Row struct {
	ID            int64
	TxID          uint64
	LSN           uint64 // the commit LSN of its transaction, where the store knows it
	Ahead         string // the store's note for the position after this row (Position.Ahead)
	EventID       string // canonical lower-case UUID text
	AggregateType string
	AggregateID   string
	EventType     string
	Exchange      *string // nil means the relay's default exchange
	RoutingKey    string
	Payload       []byte
	ContentType   string
	Headers       []byte // the row's headers as JSON text
	CreatedAt     time.Time
	// Lock says whether the row's transaction took its aggregate's
	// ordering lock before its first write.
	Lock Lock
	// PayloadSize is the payload's size in bytes; a payload larger than
	// the read's Batch.MaxPayload was not loaded (Payload nil).
	PayloadSize int
}

// Batch bounds one read, so that memory is bounded by bytes as well as by
// rows, whatever the rows hold. Zero fields bound nothing.
type Batch struct {
	// Rows is the most rows returned.
	Rows int
	// Bytes is the most bytes of payloads and headers returned, past the
	// first row (which is always returned, however large).
	Bytes int
	// MaxPayload is the largest payload loaded: a larger one is left out
	// (Payload nil) and only its size told (PayloadSize).
	MaxPayload int
}

// Size is what the row's payload and headers hold in memory, roughly.
func (r *Row) Size() int { return len(r.Payload) + len(r.Headers) + rowOverhead }

// rowOverhead is what a row's other fields take, roughly.
const rowOverhead = 200

// Position returns the row's place in publishing order.
func (r *Row) Position() Position {
	return Position{TxID: r.TxID, ID: r.ID, LSN: r.LSN, Ahead: r.Ahead}
}

// Aggregate identifies an ordering key.
type Aggregate struct{ Type, ID string }

// Aggregate returns the row's ordering key.
func (r *Row) Aggregate() Aggregate { return Aggregate{r.AggregateType, r.AggregateID} }
