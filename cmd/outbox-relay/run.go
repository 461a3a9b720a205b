package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
	"github.com/outboxrelay/outboxrelay/relay/metrics"
	"github.com/outboxrelay/outboxrelay/relay/postgres"
	"github.com/outboxrelay/outboxrelay/relay/rabbitmq"
)

const runUsage = `usage: outbox-relay run

Publishes committed outbox rows to RabbitMQ until SIGTERM or SIGINT. The first
signal stops reading, waits up to RELAY_SHUTDOWN_TIMEOUT for in-flight
confirms, records them and exits 0; a second signal aborts at once (exit 1).
Configuration comes from RELAY_ variables only (see outbox-relay help).
`

func runCommand(ctx context.Context, args []string, stderr io.Writer) error {
	if err := parseFlags(flag.NewFlagSet("run", flag.ContinueOnError), args, runUsage, stderr); err != nil {
		return err
	}
	e, err := loadEnv()
	if err != nil {
		return err
	}
	m, err := newMain(e, newLogger(e, stderr))
	if err != nil {
		return err
	}
	defer m.Close()

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	done := make(chan struct{})
	defer close(done)
	go func() {
		var sig os.Signal
		select {
		case sig = <-signals:
		case <-done:
			return
		}
		m.log.Info("stopping: waiting for in-flight confirms", "signal", sig.String(), "timeout", e.ShutdownTimeout)
		stop()
		// The relay bounds its wait for confirms by the shutdown timeout,
		// then takes up to about 10 s more to record them, release the
		// lease and close its connections; this is the backstop if a call
		// it cannot interrupt hangs past that.
		backstop := time.NewTimer(e.ShutdownTimeout + 15*time.Second)
		defer backstop.Stop()
		select {
		case sig = <-signals:
			m.log.Error("second signal: aborting without waiting", "signal", sig.String())
		case <-backstop.C:
			m.log.Error("still not stopped long after the shutdown timeout: aborting")
		case <-done:
			return
		}
		os.Exit(1)
	}()
	return m.Run(ctx)
}

// Main wires the relay's components: Run starts them in order and Close
// undoes them in reverse.
type Main struct {
	env       *env
	log       *slog.Logger
	store     *postgres.Store
	broker    *rabbitmq.Broker
	listener  *postgres.Listener
	holdUps   *postgres.HoldUpWatcher
	retention *postgres.Retention
	metrics   *metrics.Metrics
	sampler   *sampler
	relay     *relay.Relay
	http      *http.Server
}

func newMain(e *env, log *slog.Logger) (*Main, error) {
	storeCfg, err := e.storeConfig()
	if err != nil {
		return nil, err
	}
	brokerCfg, err := e.brokerConfig()
	if err != nil {
		return nil, err
	}
	relayCfg, err := e.relayConfig()
	if err != nil {
		return nil, err
	}
	m := &Main{env: e, log: log}
	if err := m.open(storeCfg, brokerCfg, relayCfg); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// open builds the components from their configurations, in order.
func (m *Main) open(storeCfg postgres.Config, brokerCfg rabbitmq.Config, relayCfg relay.Config) error {
	var err error
	storeCfg.Logger = m.log
	if m.store, err = postgres.Open(storeCfg); err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	brokerCfg.Logger = m.log
	brokerCfg.Window = relayCfg.Window()
	if m.broker, err = rabbitmq.New(brokerCfg); err != nil {
		return fmt.Errorf("open broker: %w", err)
	}
	logical := storeCfg.Source == postgres.SourceLogical
	if !logical { // the logical source wakes the relay itself
		if m.listener, err = postgres.NewListener(postgres.ListenerConfig{URL: storeCfg.URL, Logger: m.log}); err != nil {
			return fmt.Errorf("create listener: %w", err)
		}
	}
	m.metrics = metrics.New(m.broker.Connected)
	if storeCfg.Partitions > 1 {
		m.metrics.Share(func() (int, int64) {
			parts, takes := m.store.Share()
			return len(parts), takes
		})
	}
	// One log line when a long transaction has held rows back for 10 s
	// (the default threshold), one when it ends; not for the logical
	// source, which no open transaction holds back.
	if !logical {
		if m.holdUps, err = postgres.NewHoldUpWatcher(m.store.Admin(), postgres.HoldUpWatcherConfig{Logger: m.log}); err != nil {
			return fmt.Errorf("create hold-up watcher: %w", err)
		}
	}
	// Published rows older than RELAY_RETENTION are deleted while this
	// replica holds the lease; 0 disables it (Run returns at once).
	m.retention, err = postgres.NewRetention(m.store, postgres.RetentionConfig{Retention: m.env.Retention, Logger: m.log,
		OnDeleted: m.metrics.RetentionDeleted})
	if err != nil {
		return fmt.Errorf("create retention: %w", err)
	}
	samplerCfg := samplerConfig{}
	if logical {
		relayCfg.Wake = m.store.Wake() // the slot's rows, as they come
		samplerCfg.Unrecorded = m.store.Unrecorded
	} else {
		relayCfg.Wake = m.listener.C()
	}
	m.sampler = newSampler(m.store.Admin(), m.metrics, samplerCfg)
	relayCfg.Logger = m.log
	relayCfg.Observer = m.metrics
	if m.relay, err = relay.New(relayCfg, m.store, m.broker); err != nil {
		return fmt.Errorf("create relay: %w", err)
	}
	return nil
}

// Run starts the background services and the optional HTTP server, then
// runs the relay until ctx ends.
func (m *Main) Run(ctx context.Context) error {
	m.log.Info("outbox-relay starting", "version", version(),
		"database", postgres.Describe(m.env.DatabaseURL), "table", m.env.Table,
		"batch_size", m.env.BatchSize, "poll_interval", m.env.PollInterval)

	var wg sync.WaitGroup
	defer wg.Wait()
	lctx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	if m.listener != nil {
		wg.Go(func() { m.listener.Run(lctx) })
	}
	if m.holdUps != nil {
		wg.Go(func() { m.holdUps.Run(lctx) })
	}
	wg.Go(func() { m.retention.Run(lctx) })

	if m.env.HTTPAddr != "" {
		ln, err := net.Listen("tcp", m.env.HTTPAddr)
		if err != nil {
			return &usageError{fmt.Sprintf("RELAY_HTTP_ADDR: %v", err)}
		}
		wg.Go(func() { m.sampler.Run(lctx) })
		m.http = newHTTPServer(probeHandler(m.metrics, stuckAfter(m.env)))
		wg.Go(func() {
			if err := m.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				m.log.Error("http server stopped", "err", err)
			}
		})
		defer m.http.Close()
	}

	if err := m.relay.Run(ctx); err != nil {
		if errors.Is(err, relay.ErrNotSetUp) {
			return &usageError{err.Error()}
		}
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

// newHTTPServer serves the probes and metrics. The image listens on all
// interfaces, so whoever can reach the port is a client: none may hold a
// connection open for long or send a large request, and a slow reader
// cannot keep a response pending. The handlers answer from memory, within
// milliseconds, and take no request body.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
}

// Close releases the connections in reverse order of opening.
func (m *Main) Close() {
	if m.broker != nil {
		_ = m.broker.Close()
	}
	if m.store != nil {
		m.store.Close()
	}
}
