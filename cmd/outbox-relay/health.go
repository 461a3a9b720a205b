package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

const healthUsage = `usage: outbox-relay health

Asks the relay running beside it whether it is alive: GETs /healthz on the
port of RELAY_HTTP_ADDR (on 127.0.0.1 when the address names no host or all
interfaces) with a 2 s timeout. Exit codes: 0 it answered 200, 1 anything
else, 2 RELAY_HTTP_ADDR is empty or invalid. Made for container health
checks in images without a shell or curl.
`

// healthTimeout bounds the whole request: a relay that cannot answer
// /healthz within it is not healthy.
const healthTimeout = 2 * time.Second

func healthCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if err := parseFlags(flag.NewFlagSet("health", flag.ContinueOnError), args, healthUsage, stderr); err != nil {
		return err
	}
	// Only RELAY_HTTP_ADDR matters here: a health check must not fail on
	// the database URL the relay itself validates at start.
	e, err := readEnv()
	if err != nil {
		return err
	}
	url, err := healthURL(e.HTTPAddr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	// Never through a proxy: the relay is on this host or its pod.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s answered %s", url, resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// healthURL turns the relay's listen address into the URL of its /healthz.
// A listener on all interfaces (":9090", "0.0.0.0:9090", "[::]:9090") is
// asked on the loopback address; one bound to a given host, on that host.
func healthURL(addr string) (string, error) {
	if addr == "" {
		return "", badVar("HTTP_ADDR", "not set: the relay serves no /healthz")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", badVar("HTTP_ADDR", "%v", err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", badVar("HTTP_ADDR", "want a port number from 1 to 65535, got %q", port)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
