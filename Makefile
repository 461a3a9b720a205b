# Targets for building and testing outbox-relay. "make test" starts throwaway
# PostgreSQL and RabbitMQ servers (scripts/servers.sh) unless
# RELAY_TEST_DATABASE_URL / RELAY_TEST_AMQP_URL name existing ones.

GO        ?= go
GOFLAGS   ?=
TESTFLAGS ?= -race -count=1 -timeout 30m
PKGS      ?= ./...

export GOFLAGS

.PHONY: build test demo demo-quickstart bench chaos vet fmt-check

build:
	$(GO) build -o bin/outbox-relay ./cmd/outbox-relay

test:
	scripts/servers.sh run -- $(GO) test $(TESTFLAGS) $(PKGS)

# demo runs the shop (examples/shop): an orders and an inventory service,
# each with its own database and relay, a saga between them, and a check
# that every order agrees everywhere. demo-quickstart runs the smaller
# quickstart: one service, the relay and a checking consumer.
# DEMO_DURATION=30s stops either by itself; DEMO_KILL_RELAY=1 also kills and
# restarts the relays midway.
demo:
	scripts/demo.sh shop

demo-quickstart:
	scripts/demo.sh quickstart

# bench runs the benchmark suite (bench/): drains next to a raw amqp091-go
# publisher on classic and quorum queues, reads, latency, the writers' cost,
# the relay binary's memory and the writer library, in one run, and prints a
# markdown table of figures and ratios, also written to BENCH_OUT. It
# asserts nothing about time; it fails only on wrong results. No -race: the
# race detector distorts speed. BENCH_LONG=1 runs the long version;
# BENCH_ROUNDS=N runs N rounds of each raw/relay pair instead of the mode's;
# BENCH_ONLY=regexp runs only the sections it matches.
BENCH_OUT    ?= $(CURDIR)/bench-results.md
BENCH_LONG   ?=
BENCH_ROUNDS ?= 0
BENCH_ONLY   ?=
# BENCH_PIN=1 pins the throwaway broker to CPU 0, and PostgreSQL and the
# suite to the other CPUs, as if the broker had a machine of its own.
BENCH_PIN    ?=
bench:
	$(if $(filter 1,$(BENCH_PIN)),SERVERS_BROKER_CPUS=0 SERVERS_OTHER_CPUS=$$(seq -s, 1 $$(($$(nproc) - 1)))) \
	scripts/servers.sh run -- $(GO) test -count=1 -timeout 60m -run '^TestSuite$$' -v ./bench/ \
		-args -bench.suite -bench.out=$(BENCH_OUT) -bench.rounds=$(BENCH_ROUNDS) \
		-bench.only='$(BENCH_ONLY)' $(if $(filter 1,$(BENCH_LONG)),-bench.long)


# chaos runs the chaos test for CHAOS_DURATION with CHAOS_REPLICAS relays,
# once per source in CHAOS_SOURCES (make test runs it for 40s with two
# relays, for both sources, and with three sharing the work): writers,
# relays and a consumer on servers of their own while faults are injected
# one after another; it prints the fault counts and the verdict (lost,
# unexpected, order, duplicates). CHAOS_SOURCES=cluster runs it against a
# three-node RabbitMQ cluster and a PostgreSQL primary with a standby.
CHAOS_DURATION ?= 10m
CHAOS_REPLICAS ?= 3
CHAOS_SOURCES  ?= poll,logical,shared
chaos:
	$(GO) test -race -count=1 -timeout 0 -run '^TestChaos$$' -v ./cmd/outbox-relay/ \
		-chaos.duration=$(CHAOS_DURATION) -chaos.replicas=$(CHAOS_REPLICAS) -chaos.sources=$(CHAOS_SOURCES)

vet:
	$(GO) vet $(PKGS)

# fmt-check fails listing the files that gofmt would change.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
