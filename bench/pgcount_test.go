package bench

import (
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// statementCounter is a TCP proxy in front of PostgreSQL that counts the
// statements its clients run: each simple Query and each Execute of the
// extended protocol. It is how the idle relay's cost to its database is
// measured, exactly, without the delay of the server's statistics.
type statementCounter struct {
	ln       net.Listener
	upstream string
	n        atomic.Int64
	wg       sync.WaitGroup
}

// countQueries starts a counter in front of the server of dbURL and
// returns it with the URL that goes through it (plain text, so the
// protocol can be read).
func countQueries(t *testing.T, dbURL string) (*statementCounter, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &statementCounter{ln: ln, upstream: u.Host}
	c.wg.Go(c.accept)
	t.Cleanup(func() {
		ln.Close()
		c.wg.Wait()
	})
	u.Host = ln.Addr().String()
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return c, u.String()
}

func (c *statementCounter) accept() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.upstream)
		if err != nil {
			client.Close()
			continue
		}
		c.wg.Go(func() {
			_, _ = io.Copy(client, server)
			client.Close()
		})
		c.wg.Go(func() {
			c.count(io.TeeReader(client, server))
			server.Close()
		})
	}
}

// count reads the client's side of the protocol: an untyped startup
// message, then typed messages, each with a 4-byte length.
func (c *statementCounter) count(r io.Reader) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:4]); err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(head[:4]))-4); err != nil {
		return
	}
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return
		}
		if head[0] == 'Q' || head[0] == 'E' {
			c.n.Add(1)
		}
		if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(head[1:]))-4); err != nil {
			return
		}
	}
}
