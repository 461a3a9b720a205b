package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

// env is every RELAY_ variable. It is the only place the environment is
// read; each component gets its own Config built from it. Each envconfig
// tag is the name without RELAY_ (help, and the deployments' tests, read
// them so); readEnv reads RELAY_ variables only. The bounds in a desc are
// the ones loadEnv, relayConfig and brokerConfig check, in the words of
// the table in docs/configuration.md (readme_test.go checks it).
type env struct {
	DatabaseURL     string        `envconfig:"DATABASE_URL" desc:"PostgreSQL URL or DSN (pgx syntax; several hosts for failover). Required; not blank. Percent-encode reserved characters in a URL's password (@ as %40, / as %2F)."`
	AMQPURL         string        `envconfig:"AMQP_URL" desc:"amqp:// or amqps:// URL; a comma-separated list for a cluster, tried in turn. Required by run; every port 1 to 65535."`
	Table           string        `envconfig:"TABLE" default:"outbox" desc:"Outbox table, optionally schema-qualified (plain identifiers only)."`
	Source          string        `envconfig:"SOURCE" default:"poll" desc:"Where rows are read: poll reads the table by transaction id and needs nothing of the server; logical reads its inserts from a replication slot in commit order (wal_level = logical; outbox-relay migrate creates the slot and publication). See docs/logical.md."`
	Slot            string        `envconfig:"SLOT" default:"" desc:"Replication slot of RELAY_SOURCE=logical (1 to 63 lower-case letters, digits and underscores); empty means outbox_relay_DATABASE_SCHEMA_TABLE, one per database and table."`
	Publication     string        `envconfig:"PUBLICATION" default:"" desc:"Publication of RELAY_SOURCE=logical (at most 63 bytes); empty means outbox_relay_SCHEMA_TABLE."`
	Partitions      int           `envconfig:"PARTITIONS" default:"1" desc:"Partitions the table's aggregates are hashed into (1 to 1024), shared among the running replicas: each publishes about P/N of them, every aggregate in order. 1 means one replica publishes and the rest stand by. Every replica of a table needs the same value; outbox-relay migrate with this variable set changes it (docs/partitions.md). Poll source only."`
	Exchange        string        `envconfig:"EXCHANGE" default:"" desc:"Exchange for rows whose exchange is NULL; empty is the default exchange. At most 255 bytes."`
	Channels        int           `envconfig:"CHANNELS" default:"1" desc:"AMQP channels that carry messages (1 to 16). Each aggregate always uses the same one, so its order holds; more than one helps where the broker accepts more over several channels (quorum queues, clusters)."`
	BatchSize       int           `envconfig:"BATCH_SIZE" default:"500" desc:"Most rows read and published at a time (1 to 10000). Up to two batches await confirms at once, so a crash republishes at most 2 x RELAY_BATCH_SIZE rows."`
	PollInterval    time.Duration `envconfig:"POLL_INTERVAL" default:"100ms" desc:"Longest wait between reads of an idle outbox (1ms to 1h). After finding rows the relay reads again within 1ms, and keeps reading every 1ms for 50ms after the last rows (unless NOTIFY wake-ups come), then doubles the wait while nothing arrives."`
	MaxAttempts     int           `envconfig:"MAX_ATTEMPTS" default:"10" desc:"Failed publish attempts before a rejected row is dead (at least 1; retried with backoff from 1s, doubling up to 5m; see outbox-relay dead)."`
	LeaseTimeout    time.Duration `envconfig:"LEASE_TIMEOUT" default:"10s" desc:"How long a dead replica's lease blocks others (100ms to 10m): a standby takes over within this after the leader dies. The leader renews every third of it."`
	LockCheck       string        `envconfig:"LOCK_CHECK" default:"warn" desc:"What the relay does about rows whose transaction did not take its aggregate's ordering lock (outbox_lock, or outbox.Begin) before its first write, whose commit order it cannot vouch for: warn counts them in outbox_relay_unlocked_rows_total and logs a summary naming their aggregates at most every 30s; count only counts them."`
	ReplicaName     string        `envconfig:"REPLICA_NAME" default:"" desc:"This replica's name in the lease and in status (at most 200 bytes); empty means the host name and six random hex digits, new at each start. A live replica holds its name: a second process with the same name does not lead while the first runs."`
	DeadRows        string        `envconfig:"DEAD_ROWS" default:"hold" desc:"What a dead row does to the later rows of its aggregate: hold keeps them waiting until outbox-relay dead retries or drops it; skip lets them go on, and the next message of the aggregate names the skipped events in its outbox_skipped header."`
	BatchBytes      int           `envconfig:"BATCH_BYTES" default:"4194304" desc:"Most bytes of payloads and headers read and published at a time (65536 to 1073741824); up to two batches of them await confirms. A larger row goes alone."`
	MaxPayloadBytes int           `envconfig:"MAX_PAYLOAD_BYTES" default:"16777216" desc:"Largest payload the relay publishes (1024 to 1073741824). A row with a larger one is dead at once with its size in the reason, and is never read into memory."`
	Retention       time.Duration `envconfig:"RETENTION" default:"168h" desc:"How long published rows are kept (from created_at) before the lease holder deletes them, in small batches, every minute (or a quarter of the retention if shorter); pending, parked and dead rows are never deleted. 0 disables deletion; otherwise 10s to 87600h (10 years)."`
	HTTPAddr        string        `envconfig:"HTTP_ADDR" default:"" desc:"Address for /metrics, /healthz and /readyz, e.g. :9090; empty disables them. They need no credentials: listen on loopback or a pod-internal address, or restrict who may connect."`
	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error."`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"text" desc:"text or json."`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"How long SIGTERM waits for in-flight confirms (more than 0, at most 1h) before giving up (recording them, releasing the lease and closing take up to about 10 s more)."`
}

// Bounds of the variables, as their desc tags and the errors state them.
const (
	minPollInterval    = time.Millisecond
	maxPollInterval    = time.Hour
	minLeaseTimeout    = 100 * time.Millisecond
	maxLeaseTimeout    = 10 * time.Minute
	maxShutdownTimeout = time.Hour
	minRetention       = 10 * time.Second
	maxRetention       = 10 * 365 * 24 * time.Hour
	// maxExchange is the longest exchange name AMQP can carry: it goes in a
	// short string, whose length is one byte.
	maxExchange = 255
)

// usageError is bad configuration or usage: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func badVar(name, format string, args ...any) error {
	return &usageError{"RELAY_" + name + ": " + fmt.Sprintf(format, args...)}
}

// varName is the variable that sets an env field.
func varName(f reflect.StructField) string { return "RELAY_" + f.Tag.Get("envconfig") }

// loadEnv reads the RELAY_ variables and checks what every command needs.
func loadEnv() (*env, error) {
	e, err := readEnv()
	if err != nil {
		return nil, err
	}
	switch {
	case e.DatabaseURL == "":
		return nil, badVar("DATABASE_URL", "required, not set")
	case strings.TrimSpace(e.DatabaseURL) == "":
		return nil, badVar("DATABASE_URL", "required, but blank")
	case e.MaxAttempts < 1:
		return nil, badVar("MAX_ATTEMPTS", "must be at least 1, got %d", e.MaxAttempts)
	case e.LeaseTimeout < minLeaseTimeout || e.LeaseTimeout > maxLeaseTimeout:
		return nil, badVar("LEASE_TIMEOUT", "must be between 100ms and 10m, got %s", e.LeaseTimeout)
	case e.Retention != 0 && (e.Retention < minRetention || e.Retention > maxRetention):
		return nil, badVar("RETENTION", "must be 0 (keep everything) or between 10s and 87600h (10 years), got %s", e.Retention)
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

// readEnv fills an env from the RELAY_ variables and no others. Given the
// prefix RELAY, envconfig falls back to a field's bare tag (TABLE when
// RELAY_TABLE is unset), and a sidecar shares its pod's environment with
// the service, whose TABLE or DATABASE_URL are not the relay's. So it
// processes, without a prefix, a copy of env's type whose tags name the
// whole variable, and converts the result back: a conversion ignores tags.
func readEnv() (env, error) {
	t := reflect.TypeFor[env]()
	fields := make([]reflect.StructField, t.NumField())
	for i := range fields {
		f := t.Field(i)
		f.Tag = reflect.StructTag(fmt.Sprintf("envconfig:%q default:%q", varName(f), f.Tag.Get("default")))
		fields[i] = f
	}
	v := reflect.New(reflect.StructOf(fields))
	if err := envconfig.Process("", v.Interface()); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return env{}, badVar(strings.TrimPrefix(pe.KeyName, "RELAY_"), "invalid %s %q", kind(pe.TypeName), pe.Value)
		}
		return env{}, &usageError{err.Error()}
	}
	return v.Elem().Convert(t).Interface().(env), nil
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
	cfg := postgres.Config{URL: e.DatabaseURL, Table: table, Replica: e.ReplicaName, LeaseTimeout: e.LeaseTimeout,
		Source: postgres.Source(e.Source), Slot: e.Slot, Publication: e.Publication, Partitions: e.Partitions}
	if err := cfg.Validate(); err != nil {
		return cfg, fieldError(err, map[string]string{"URL": "DATABASE_URL", "Table": "TABLE", "Replica": "REPLICA_NAME",
			"Source": "SOURCE", "Slot": "SLOT", "Publication": "PUBLICATION", "Partitions": "PARTITIONS"})
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
		DeadRows:        relay.DeadRows(e.DeadRows),
		BatchBytes:      e.BatchBytes,
		MaxPayloadBytes: e.MaxPayloadBytes,
	}
	// Zero would silently mean "default" to the relay; from the
	// environment it is a mistake. A poll interval of a few nanoseconds
	// spins an idle relay on the database, and one of days leaves it
	// deaf without the wake-up listener.
	switch {
	case len(cfg.Exchange) > maxExchange:
		return cfg, badVar("EXCHANGE", "must be at most %d bytes, got %d", maxExchange, len(cfg.Exchange))
	case cfg.BatchSize <= 0:
		return cfg, badVar("BATCH_SIZE", "must be at least 1, got %d", cfg.BatchSize)
	case cfg.PollInterval < minPollInterval || cfg.PollInterval > maxPollInterval:
		return cfg, badVar("POLL_INTERVAL", "must be between 1ms and 1h, got %s", cfg.PollInterval)
	case cfg.ShutdownTimeout <= 0 || cfg.ShutdownTimeout > maxShutdownTimeout:
		return cfg, badVar("SHUTDOWN_TIMEOUT", "must be more than 0 and at most 1h, got %s", cfg.ShutdownTimeout)
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		return cfg, fieldError(err, map[string]string{
			"BatchSize": "BATCH_SIZE", "PollInterval": "POLL_INTERVAL", "MinPoll": "POLL_INTERVAL",
			"ShutdownTimeout": "SHUTDOWN_TIMEOUT", "LeaseTimeout": "LEASE_TIMEOUT", "LockCheck": "LOCK_CHECK",
			"DeadRows": "DEAD_ROWS", "BatchBytes": "BATCH_BYTES", "MaxPayloadBytes": "MAX_PAYLOAD_BYTES",
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

// loadStore reads the environment and builds the store's Config from it,
// for the commands that need only the database.
func loadStore() (*env, postgres.Config, error) {
	e, err := loadEnv()
	if err != nil {
		return nil, postgres.Config{}, err
	}
	cfg, err := e.storeConfig()
	if err != nil {
		return nil, postgres.Config{}, err
	}
	return e, cfg, nil
}

// openAdmin reads the environment and opens the outbox's operator side,
// for the one-shot commands (status, dead, replay).
func openAdmin() (*env, *postgres.Admin, error) {
	e, cfg, err := loadStore()
	if err != nil {
		return nil, nil, err
	}
	admin, err := postgres.OpenAdmin(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("open database: %w", err)
	}
	return e, admin, nil
}

// adminTimeout bounds the database work of status and dead.
const adminTimeout = 30 * time.Second

// withAdmin opens the outbox's operator side, runs fn with it within
// adminTimeout and closes it.
func withAdmin(ctx context.Context, fn func(context.Context, *env, *postgres.Admin) error) error {
	e, admin, err := openAdmin()
	if err != nil {
		return err
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	return fn(ctx, e, admin)
}
