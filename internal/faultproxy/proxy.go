// Package faultproxy is a TCP proxy for tests that cuts and stalls the
// connections passing through it, the network faults a real server cannot be
// made to produce on demand.
//
// A client connects to Addr instead of the server; each connection is
// forwarded to the upstream address. Cut resets every open connection (the
// client sees a broken connection, as when a router or firewall drops its
// state) and Stall stops forwarding bytes in both directions for a while
// without closing anything (as during a partition or a frozen link): the
// client's writes fill buffers and its reads hang until the stall ends or
// its own timeouts fire.
package faultproxy

import (
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections from Addr to an upstream address. Create it
// with New and Close it when done.
type Proxy struct {
	upstream string
	ln       net.Listener

	mu     sync.Mutex
	conns  map[*link]struct{}
	open   chan struct{} // closed while bytes flow; a fresh one during a stall
	stalls int           // stalls in progress, which may overlap
	closed bool
	wg     sync.WaitGroup
}

// link is one client connection and its upstream connection.
type link struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
}

// New listens on a free port of 127.0.0.1 and forwards to upstream
// ("host:port").
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{upstream: upstream, ln: ln, conns: map[*link]struct{}{}, open: open}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address clients connect to instead of the upstream.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut resets every open connection, both to the client and to the upstream.
// New connections are accepted as before. It returns how many it cut.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for l := range p.conns {
		l.reset()
	}
	return n
}

// Stall stops forwarding bytes on every connection, open or new, for d.
// Connections are not closed; the bytes read meanwhile are delivered when
// the stall ends.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	if p.stalls == 0 {
		p.open = make(chan struct{})
	}
	p.stalls++
	p.mu.Unlock()
	time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stalls--; p.stalls == 0 {
			close(p.open)
		}
	})
}

// Close stops accepting, resets every connection and waits for the
// forwarding goroutines to end.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for l := range p.conns {
		l.reset()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.serve(client) })
	}
}

func (p *Proxy) serve(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		resetConn(client)
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.reset()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(l, server, client) })
	wg.Go(func() { p.pipe(l, client, server) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

// pipe copies src to dst, waiting out stalls before each write. Either side
// ending ends the link: a half-closed TCP connection is not worth modelling
// for the servers this proxies.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer l.reset()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.gate():
			case <-l.done:
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// reset closes both connections of the link with a TCP reset.
func (l *link) reset() {
	l.once.Do(func() {
		close(l.done)
		resetConn(l.client)
		resetConn(l.server)
	})
}

// resetConn closes c so that the peer gets a RST, not an orderly FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
