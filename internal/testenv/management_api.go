package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// errNotFound reports a 404 from the management API.
var errNotFound = errors.New("not found")

// mgmtClient sends the management API requests. Keep-alives are off so that
// no idle connection, and no goroutine reading it, outlives a request: tests
// that check for leaked goroutines (goleak) would report them.
var mgmtClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// mgmtAPI is a minimal client for the RabbitMQ management HTTP API.
type mgmtAPI struct {
	base     string // scheme://host:port, without credentials or trailing slash
	user     string
	password string
}

// newMgmtAPI parses rawURL, an http(s) URL with credentials in it.
func newMgmtAPI(t testing.TB, rawURL string) mgmtAPI {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		t.Fatalf("testenv: %s must be an http:// URL with credentials, got %q", envRabbitAPI, rawURL)
	}
	api := mgmtAPI{base: u.Scheme + "://" + u.Host, user: "guest", password: "guest"}
	if u.User != nil {
		api.user = u.User.Username()
		api.password, _ = u.User.Password()
	}
	return api
}

// do sends a request with body encoded as JSON (if not nil) and decodes the
// response into out (if not nil). path must be escaped already.
func (a mgmtAPI) do(t testing.TB, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth(a.user, a.password)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Reason", "closed by testenv for "+t.Name())

	resp, err := mgmtClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is the management plugin enabled?)", method, path, err)
	}
	defer resp.Body.Close()
	msg, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s %s: %w: %s", method, path, errNotFound, msg)
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	if out != nil {
		if err := json.Unmarshal(msg, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}
