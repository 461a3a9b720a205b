package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

// env is every RELAY_ variable. It is the only place the environment is
// read; each component gets its own Config built from it.
type env struct {
	DatabaseURL     string        `envconfig:"DATABASE_URL" desc:"PostgreSQL URL or DSN (pgx syntax; several hosts for failover). Required."`
	AMQPURL         string        `envconfig:"AMQP_URL" desc:"amqp:// or amqps:// URL; a comma-separated list for a cluster, tried in turn. Required by run."`
	Table           string        `envconfig:"TABLE" default:"outbox" desc:"Outbox table, optionally schema-qualified (plain identifiers only)."`
	Exchange        string        `envconfig:"EXCHANGE" default:"" desc:"Exchange for rows whose exchange is NULL; empty is the default exchange."`
	Channels        int           `envconfig:"CHANNELS" default:"1" desc:"AMQP channels that carry messages (1 to 16). Each aggregate always uses the same one, so its order holds; more than one helps where the broker accepts more over several channels (quorum queues, clusters)."`
	BatchSize       int           `envconfig:"BATCH_SIZE" default:"500" desc:"Most rows read and published at a time. Up to two batches await confirms at once, so a crash republishes at most 2 x RELAY_BATCH_SIZE rows."`
	PollInterval    time.Duration `envconfig:"POLL_INTERVAL" default:"100ms" desc:"Longest wait between reads of an idle outbox. After finding rows the relay polls again within 1ms, doubling the wait while nothing arrives."`
	MaxAttempts     int           `envconfig:"MAX_ATTEMPTS" default:"10" desc:"Failed publish attempts before a rejected row is dead (retried with backoff from 1s, doubling up to 5m; see outbox-relay dead)."`
	LeaseTimeout    time.Duration `envconfig:"LEASE_TIMEOUT" default:"10s" desc:"How long a dead replica's lease blocks others: a standby takes over within this after the leader dies. The leader renews every third of it."`
	LockCheck       string        `envconfig:"LOCK_CHECK" default:"warn" desc:"What the relay does about rows whose transaction did not take its aggregate's ordering lock (outbox_lock, or outbox.Begin) before its first write, whose commit order it cannot vouch for: warn counts them in outbox_relay_unlocked_rows_total and logs a summary naming their aggregates at most every 30s; count only counts them."`
	ReplicaName     string        `envconfig:"REPLICA_NAME" default:"" desc:"This replica's name in the lease and in status; empty means the host name. Must differ between running replicas: a replica named like the lease holder takes over at once (a restart)."`
	Retention       time.Duration `envconfig:"RETENTION" default:"168h" desc:"How long published rows are kept (from created_at) before the lease holder deletes them, in small batches, every minute (or a quarter of the retention if shorter); pending, parked and dead rows are never deleted. 0 disables deletion."`
	HTTPAddr        string        `envconfig:"HTTP_ADDR" default:"" desc:"Address for /metrics, /healthz and /readyz, e.g. :9090; empty disables them."`
	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error."`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"text" desc:"text or json."`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"How long SIGTERM waits for in-flight confirms before giving up (recording them, releasing the lease and closing take up to about 10 s more)."`
}

// usageError is bad configuration or usage: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func badVar(name, format string, args ...any) error {
	return &usageError{"RELAY_" + name + ": " + fmt.Sprintf(format, args...)}
}

// loadEnv reads the RELAY_ variables and checks what every command needs.
func loadEnv() (*env, error) {
	var e env
	if err := envconfig.Process("RELAY", &e); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return nil, badVar(strings.TrimPrefix(pe.KeyName, "RELAY_"), "invalid %s %q", kind(pe.TypeName), pe.Value)
		}
		return nil, &usageError{err.Error()}
	}
	switch {
	case e.DatabaseURL == "":
		return nil, badVar("DATABASE_URL", "required, not set")
	case e.MaxAttempts < 1:
		return nil, badVar("MAX_ATTEMPTS", "must be at least 1, got %d", e.MaxAttempts)
	case e.LeaseTimeout < 100*time.Millisecond:
		return nil, badVar("LEASE_TIMEOUT", "must be at least 100ms, got %s", e.LeaseTimeout)
	case e.Retention < 0:
		return nil, badVar("RETENTION", "must not be negative, got %s", e.Retention)
	}
	if _, err := e.logLevel(); err != nil {
		return nil, err
	}
	if e.LogFormat != "text" && e.LogFormat != "json" {
		return nil, badVar("LOG_FORMAT", "must be text or json, got %q", e.LogFormat)
	}
	if _, err := e.storeConfig(); err != nil {
		return nil, err
	}
	return &e, nil
}

func kind(typeName string) string {
	if typeName == "Duration" || typeName == "time.Duration" {
		return "duration (use e.g. 250ms, 10s, 1h)"
	}
	return typeName
}

func (e *env) logLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(e.LogLevel)); err != nil {
		return 0, badVar("LOG_LEVEL", "must be debug, info, warn or error, got %q", e.LogLevel)
	}
	return l, nil
}

func (e *env) storeConfig() (postgres.Config, error) {
	table, err := postgres.ParseTable(e.Table)
	if err != nil {
		return postgres.Config{}, badVar("TABLE", "%v", err)
	}
	cfg := postgres.Config{URL: e.DatabaseURL, Table: table, Replica: e.ReplicaName, LeaseTimeout: e.LeaseTimeout}
	if err := cfg.Validate(); err != nil {
		return cfg, fieldError(err, map[string]string{"URL": "DATABASE_URL", "Table": "TABLE"})
	}
	return cfg, nil
}

func (e *env) brokerConfig() (rabbitmq.Config, error) {
	if e.AMQPURL == "" {
		return rabbitmq.Config{}, badVar("AMQP_URL", "required, not set")
	}
	urls, err := rabbitmq.ParseURLs(e.AMQPURL)
	if err != nil {
		return rabbitmq.Config{}, badVar("AMQP_URL", "%v", err)
	}
	if e.Channels < 1 || e.Channels > 16 {
		return rabbitmq.Config{}, badVar("CHANNELS", "must be between 1 and 16, got %d", e.Channels)
	}
	return rabbitmq.Config{URLs: urls, Channels: e.Channels}, nil
}

func (e *env) relayConfig() (relay.Config, error) {
	cfg := relay.Config{
		Exchange:        e.Exchange,
		BatchSize:       e.BatchSize,
		PollInterval:    e.PollInterval,
		ShutdownTimeout: e.ShutdownTimeout,
		LeaseTimeout:    e.LeaseTimeout,
		MaxAttempts:     e.MaxAttempts,
		LockCheck:       relay.LockCheck(e.LockCheck),
	}
	// Zero would silently mean "default" to the relay; from the
	// environment it is a mistake.
	switch {
	case cfg.BatchSize <= 0:
		return cfg, badVar("BATCH_SIZE", "must be at least 1, got %d", cfg.BatchSize)
	case cfg.PollInterval <= 0:
		return cfg, badVar("POLL_INTERVAL", "must be positive, got %s", cfg.PollInterval)
	case cfg.ShutdownTimeout <= 0:
		return cfg, badVar("SHUTDOWN_TIMEOUT", "must be positive, got %s", cfg.ShutdownTimeout)
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		return cfg, fieldError(err, map[string]string{
			"BatchSize": "BATCH_SIZE", "PollInterval": "POLL_INTERVAL", "MinPoll": "POLL_INTERVAL",
			"ShutdownTimeout": "SHUTDOWN_TIMEOUT", "LeaseTimeout": "LEASE_TIMEOUT", "LockCheck": "LOCK_CHECK",
		})
	}
	return cfg, nil
}

// fieldError renames a component's ConfigError after the variable that set
// the field.
func fieldError(err error, vars map[string]string) error {
	var ce *relay.ConfigError
	if errors.As(err, &ce) {
		if name, ok := vars[ce.Field]; ok {
			return badVar(name, "%s", ce.Problem)
		}
	}
	return &usageError{err.Error()}
}

// openStore reads the environment and opens the outbox store, for the
// one-shot commands (status, dead).
func openStore() (*env, *postgres.Store, error) {
	e, err := loadEnv()
	if err != nil {
		return nil, nil, err
	}
	cfg, err := e.storeConfig()
	if err != nil {
		return nil, nil, err
	}
	store, err := postgres.Open(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("open database: %w", err)
	}
	return e, store, nil
}
