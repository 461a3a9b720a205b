package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// healthServer answers /healthz with code and every other path with 404, so
// an exit 0 also proves the command asked the right path.
func healthServer(t *testing.T, code int) (port string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func TestHealth(t *testing.T) {
	t.Parallel()
	ok, unavailable := healthServer(t, http.StatusOK), healthServer(t, http.StatusServiceUnavailable)

	// A port nothing listens on: taken, then released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()

	cases := []struct {
		name, addr string
		code       int
		output     string
	}{
		{"200 on all interfaces", ":" + ok, 0, "ok"},
		{"200 on a named host", "127.0.0.1:" + ok, 0, "ok"},
		{"200 on unspecified address", "0.0.0.0:" + ok, 0, "ok"},
		{"503", ":" + unavailable, 1, "503"},
		{"nothing listening", ":" + closed, 1, "health"},
		{"empty address", "", 2, "RELAY_HTTP_ADDR"},
		{"no port", "localhost", 2, "RELAY_HTTP_ADDR"},
		{"port zero", ":0", 2, "RELAY_HTTP_ADDR"},
		{"port name", ":http", 2, "RELAY_HTTP_ADDR"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			// No database URL: health must not need one.
			code, out := runCmd(t, []string{"RELAY_HTTP_ADDR=" + c.addr}, "health")
			if code != c.code || !strings.Contains(out, c.output) {
				t.Fatalf("RELAY_HTTP_ADDR=%q: exit %d, output %q; want exit %d and %q", c.addr, code, out, c.code, c.output)
			}
		})
	}
}

func TestHealthUsage(t *testing.T) {
	t.Parallel()
	if code, out := runCmd(t, nil, "health", "-h"); code != 0 || !strings.Contains(out, "/healthz") {
		t.Fatalf("health -h: exit %d, output %q", code, out)
	}
	if code, out := runCmd(t, []string{"RELAY_HTTP_ADDR=:9"}, "health", "extra"); code != 2 {
		t.Fatalf("health extra: exit %d (%s), want 2", code, out)
	}
}
