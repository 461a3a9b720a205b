# Targets for building and testing outbox-relay. "make test" starts throwaway
# PostgreSQL and RabbitMQ servers (scripts/servers.sh) unless
# RELAY_TEST_DATABASE_URL / RELAY_TEST_AMQP_URL name existing ones.

GO        ?= go
GOFLAGS   ?=
TESTFLAGS ?= -race -count=1 -timeout 30m
PKGS      ?= ./...

export GOFLAGS

.PHONY: build test vet fmt-check

build:
	$(GO) build -o bin/outbox-relay ./cmd/outbox-relay

test:
	scripts/servers.sh run -- $(GO) test $(TESTFLAGS) $(PKGS)

vet:
	$(GO) vet $(PKGS)

# fmt-check fails listing the files that gofmt would change.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
