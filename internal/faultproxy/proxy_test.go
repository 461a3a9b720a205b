package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends a line and reads the echo, giving up after wait.
func roundTrip(c net.Conn, r *bufio.Reader, line string, wait time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

func TestForwards(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	for _, line := range []string{"one", "two"} {
		got, err := roundTrip(c, r, line, 10*time.Second)
		if err != nil || got != line {
			t.Fatalf("echo of %q = %q, %v", line, got, err)
		}
	}
}

func TestCutResetsOpenConnectionsOnly(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, "before", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := p.Cut(); n != 1 {
		t.Fatalf("Cut cut %d connections, want 1", n)
	}
	if got, err := roundTrip(c, r, "after", 10*time.Second); err == nil {
		t.Fatalf("the cut connection still echoes %q", got)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the cut connection hangs instead of failing: %v", err)
	}
	// The proxy itself goes on: a new connection works.
	c2, r2 := dial(t, p)
	if got, err := roundTrip(c2, r2, "again", 10*time.Second); err != nil || got != "again" {
		t.Fatalf("new connection after a cut: %q, %v", got, err)
	}
}

func TestStallHoldsBytesUntilItEnds(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, "before", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall(time.Hour)
	// While stalled, nothing comes back, however long the client waits
	// within reason; the connection stays open.
	if got, err := roundTrip(c, r, "held", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("echo during a stall: %q, %v; want a timeout", got, err)
	}
	_ = p.Close() // ends the stalled links too
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection survived Close")
	}
}

func TestStallEnds(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	p.Stall(200 * time.Millisecond)
	// The bytes sent during the stall arrive after it.
	if got, err := roundTrip(c, r, "late", 30*time.Second); err != nil || got != "late" {
		t.Fatalf("echo after a stall: %q, %v", got, err)
	}
	if got, err := roundTrip(c, r, "next", 10*time.Second); err != nil || got != "next" {
		t.Fatalf("echo after a stall: %q, %v", got, err)
	}
}
