package rabbitmq

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// gatedConn is a net.Conn whose Writes wait at a gate, so a test decides
// when the writer goroutine's system call "returns". It records each Write.
type gatedConn struct {
	net.Conn // unused methods panic
	entered  chan struct{}
	gate     chan struct{}
	fail     error

	mu     sync.Mutex
	writes [][]byte
	closed bool
}

func newGatedConn() *gatedConn {
	return &gatedConn{entered: make(chan struct{}, 100), gate: make(chan struct{})}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, net.ErrClosed
	}
	if g.fail != nil {
		return 0, g.fail
	}
	g.writes = append(g.writes, bytes.Clone(p))
	return len(p), nil
}

func (g *gatedConn) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		select {
		case <-g.gate:
		default:
			close(g.gate) // a real close ends a blocked write too
		}
	}
	return nil
}

func (g *gatedConn) written() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writes
}

func TestCoalescingConnMergesWritesQueuedMeanwhile(t *testing.T) {
	g := newGatedConn()
	c := newCoalescingConn(g)
	defer c.Close()
	var want []byte
	write := func(p []byte) {
		t.Helper()
		if n, err := c.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		want = append(want, p...)
	}
	write([]byte("first"))
	<-g.entered // the writer goroutine is in its system call
	for i := range 100 {
		write(bytes.Repeat([]byte{byte(i)}, i+1))
	}
	close(g.gate)
	deadline := time.Now().Add(10 * time.Second)
	for len(bytes.Join(g.written(), nil)) < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := g.written()
	if !bytes.Equal(bytes.Join(got, nil), want) {
		t.Fatalf("the connection received %d bytes, not the %d written in order", len(bytes.Join(got, nil)), len(want))
	}
	if len(got) != 2 {
		t.Fatalf("%d writes reached the connection, want 2: the first and one with the 100 queued behind it", len(got))
	}
}

func TestCoalescingConnPushesBackWhenFull(t *testing.T) {
	g := newGatedConn()
	c := newCoalescingConn(g)
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	if _, err := c.Write(make([]byte, maxQueued)); err != nil { // fills the queue
		t.Fatal(err)
	}
	returned := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("more"))
		returned <- err
	}()
	select {
	case err := <-returned:
		t.Fatalf("Write returned (%v) while %d bytes were queued", err, maxQueued)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.gate)
	if err := <-returned; err != nil {
		t.Fatalf("Write after the queue drained: %v", err)
	}
}

func TestCoalescingConnReportsAFailedWriteAndCloses(t *testing.T) {
	g := newGatedConn()
	g.fail = errors.New("connection reset by peer")
	c := newCoalescingConn(g)
	defer c.Close()
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatalf("the first Write only queues: %v", err)
	}
	close(g.gate)
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write([]byte("next"))
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, g.fail) {
		t.Fatalf("Write after a failed write = %v, want %v", err, g.fail)
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if !closed {
		t.Fatal("the connection was left open after a failed write: the client's reader would not notice")
	}
}

func TestCoalescingConnCloseEndsABlockedWrite(t *testing.T) {
	g := newGatedConn()
	c := newCoalescingConn(g)
	if _, err := c.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	<-g.entered // blocked, as against a broker that stopped reading
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("after")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
	// TestMain's leak check fails if the writer goroutine is still there.
}
