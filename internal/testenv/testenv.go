// Package testenv gives each test its own PostgreSQL database and its own
// RabbitMQ virtual host on the servers named by the environment, and removes
// them when the test ends.
//
// The servers come from three variables, which scripts/servers.sh (run by
// "make test") sets after starting throwaway servers:
//
//   - RELAY_TEST_DATABASE_URL: an admin URL for PostgreSQL, such as
//     postgres://postgres@127.0.0.1:5432/postgres.
//   - RELAY_TEST_AMQP_URL: an AMQP URL for RabbitMQ, such as
//     amqp://guest:guest@127.0.0.1:5672/.
//   - RELAY_TEST_RABBITMQ_API: the RabbitMQ management HTTP API with
//     credentials, such as http://guest:guest@127.0.0.1:15672.
//
// A missing variable fails the test rather than skipping it, so that a test
// run without servers cannot pass by testing nothing. Databases and virtual
// hosts get random names, so tests may run in parallel, in several packages
// at once, against the same servers.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"
)

// Names of the environment variables that point at the test servers.
const (
	envDatabaseURL = "RELAY_TEST_DATABASE_URL"
	envAMQPURL     = "RELAY_TEST_AMQP_URL"
	envRabbitAPI   = "RELAY_TEST_RABBITMQ_API"
)

// cleanupTimeout bounds each cleanup step, so that a wedged server fails the
// test instead of hanging it until the global test timeout.
const cleanupTimeout = 30 * time.Second

// setupTimeout bounds creating a database or a virtual host.
const setupTimeout = 60 * time.Second

// requireEnv returns the value of the environment variable name, failing the
// test with a hint about "make test" when it is unset.
func requireEnv(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("testenv: %s is not set; run the tests with \"make test\" (or scripts/servers.sh run -- go test ...) or set %s yourself", name, name)
	}
	return v
}

// randomName returns prefix followed by 16 random hex digits.
func randomName(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails.
	return prefix + hex.EncodeToString(b[:])
}
