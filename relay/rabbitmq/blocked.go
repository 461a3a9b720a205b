package rabbitmq

import amqp "github.com/rabbitmq/amqp091-go"

// A broker under a resource alarm (memory or disk) blocks its publishing
// connections: it stops reading from them. Publishing into a blocked
// connection only fills buffers, so the relay pauses instead, until the
// broker says connection.unblocked.

// Ready implements relay.Publisher: the channel is closed while publishing
// can proceed, and open (to be closed on unblocking) while the broker
// blocks this connection.
func (b *Broker) Ready() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready
}

// Blocked returns the broker's reason while it blocks this connection, and
// "" otherwise.
func (b *Broker) Blocked() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blockReason
}

// watchBlocked follows connection.blocked and .unblocked for conn until it
// closes. Notifications of a connection that is no longer current are
// ignored: a new connection starts unblocked until told otherwise.
func (b *Broker) watchBlocked(conn *amqp.Connection, notes <-chan amqp.Blocking) {
	for blk := range notes {
		b.mu.Lock()
		if conn == b.conn {
			b.setBlockedLocked(blk.Active, blk.Reason)
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
		b.setBlockedLocked(false, "")
	}
	b.mu.Unlock()
}

func (b *Broker) setBlockedLocked(active bool, reason string) {
	switch {
	case active && b.blockReason == "":
		if reason == "" {
			reason = "resource alarm"
		}
		b.blockReason = reason
		b.ready = make(chan struct{})
	case !active && b.blockReason != "":
		b.blockReason = ""
		close(b.ready)
	}
}

// Connected reports whether the broker has an open connection. A standby,
// which publishes nothing, has none.
func (b *Broker) Connected() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil && !b.conn.IsClosed()
}
