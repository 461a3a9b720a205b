package rabbitmq

import (
	"net"
	"sync"
)

// maxQueued bounds the bytes a coalescingConn holds unwritten; Write blocks
// beyond it, so a broker that stops reading (a resource alarm) still pushes
// back on the publisher.
const maxQueued = 1 << 20

// coalescingConn merges small writes into few system calls. amqp091-go
// flushes every published message on its own, one write(2) of a few hundred
// bytes each, and those calls were the largest single cost of publishing a
// backlog. Here Write only queues the bytes and returns; one goroutine writes
// whatever has queued meanwhile in one call, so a burst of messages leaves
// in a handful of segments.
//
// Nothing is acknowledged by a write: a message counts once the broker
// confirms it. A write that fails closes the connection, so the client's
// reader fails at once and every unconfirmed message is reported, and every
// later Write returns the error.
type coalescingConn struct {
	net.Conn
	mu      sync.Mutex
	changed sync.Cond // bytes queued, queue drained, or the connection failed
	queued  []byte
	spare   []byte // the buffer last written, reused for the next queue
	err     error  // why nothing more is written
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.changed.L = &cc.mu
	go cc.flush()
	return cc
}

// Write queues p for the writer goroutine. It blocks only while maxQueued
// bytes wait.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && len(c.queued) >= maxQueued {
		c.changed.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if len(c.queued) == 0 {
		c.changed.Broadcast() // the writer may be waiting for bytes
	}
	c.queued = append(c.queued, p...)
	return len(p), nil
}

// Close stops the writer and closes the connection. Bytes still queued are
// dropped: the client closes after the broker answered its close, or after
// a failure, when nothing queued matters.
func (c *coalescingConn) Close() error {
	c.fail(net.ErrClosed)
	return c.Conn.Close()
}

func (c *coalescingConn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		c.queued = nil
		c.changed.Broadcast()
	}
}

// flush writes whatever is queued, one batch at a time, until the
// connection fails or is closed.
func (c *coalescingConn) flush() {
	for {
		c.mu.Lock()
		for c.err == nil && len(c.queued) == 0 {
			c.changed.Wait()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		out := c.queued
		c.queued, c.spare = c.spare[:0], nil
		c.changed.Broadcast() // room for writers blocked on a full queue
		c.mu.Unlock()

		if _, err := c.Conn.Write(out); err != nil {
			c.fail(err)
			_ = c.Conn.Close() // the reader fails too, so the client notices now
			return
		}
		c.mu.Lock()
		if cap(out) <= maxQueued*2 {
			c.spare = out[:0]
		}
		c.mu.Unlock()
	}
}
