package rabbitmq

import amqp "github.com/rabbitmq/amqp091-go"

// A broker under a resource alarm (memory or disk) blocks its publishing
// connections: it stops reading from them. Publishing into a blocked
// connection only fills buffers, so the relay pauses instead, until the
// broker says connection.unblocked.

// Blocked implements relay.Publisher: whether the broker blocks this
// connection now, and a channel closed at the next change.
func (b *Broker) Blocked() (blocked bool, change <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blocked, b.blockChange
}

// watchBlocked follows connection.blocked and .unblocked for conn until it
// closes. Notifications of a connection that is no longer current are
// ignored: a new connection starts unblocked until told otherwise.
func (b *Broker) watchBlocked(conn *amqp.Connection, notes <-chan amqp.Blocking) {
	for blk := range notes {
		b.mu.Lock()
		if conn == b.conn {
			b.setBlockedLocked(blk.Active)
		}
		b.mu.Unlock()
		if blk.Active {
			b.log.Warn("broker is blocking publishers (resource alarm)", "reason", blk.Reason)
		} else {
			b.log.Info("broker unblocked publishers")
		}
	}
	// The connection is gone, maybe while blocked: the next one starts
	// unblocked, and the relay must get as far as opening it.
	b.mu.Lock()
	if conn == b.conn {
		b.setBlockedLocked(false)
	}
	b.mu.Unlock()
}

func (b *Broker) setBlockedLocked(active bool) {
	if active == b.blocked {
		return
	}
	b.blocked = active
	close(b.blockChange)
	b.blockChange = make(chan struct{})
}

// Connected reports whether the broker has an open connection. A standby,
// which publishes nothing, has none.
func (b *Broker) Connected() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil && !b.conn.IsClosed()
}
