# arcbox-agent. `make` alone lists the targets.

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN      := bin/arcbox-agent
CTL      := bin/arcboxctl
LINT     := .cache/bin/golangci-lint
RUN_DIR  ?= $(CURDIR)/.run
PORT     ?= 8080
LDFLAGS  := -s -w -X main.version=$(VERSION)
GO_FILES := $(shell git ls-files '*.go' 2>/dev/null)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install what building and testing need (Debian packages, Go tools).
	@./scripts/install-deps.sh

.PHONY: build
build: ## Build the static agent binary and arcboxctl into bin/.
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/arcbox-agent
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(CTL) ./cmd/arcboxctl

.PHONY: run
run: deps build ## Run the agent on built-in defaults: loopback TCP with a bearer token, unix sockets, vsock where there is one.
	@mkdir -p $(RUN_DIR)/bin $(RUN_DIR)/shared
	@# Debian's runtime binaries, where the agent looks for its bundled ones.
	@for b in containerd containerd-shim-runc-v2 dockerd runc; do ln -sf "$$(command -v $$b)" $(RUN_DIR)/bin/$$b; done
	@# A sparse image file as the data volume; the agent attaches it to a loop device.
	@test -e $(RUN_DIR)/data.img || truncate -s 16G $(RUN_DIR)/data.img
	@# The bearer token TCP requests carry: 32 random bytes, base64url, made once.
	@test -s $(RUN_DIR)/token || (umask 077; head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > $(RUN_DIR)/token)
	@chmod 600 $(RUN_DIR)/token
	@echo "token: $$(cat $(RUN_DIR)/token)"
	@echo "try:   curl -s -H \"Authorization: Bearer \$$(cat $(RUN_DIR)/token)\" localhost:$(PORT)/v1/ping"
	@echo "       DOCKER_HOST=unix://$(RUN_DIR)/docker.sock docker version"
	$(BIN) --listen tcp://127.0.0.1:$(PORT) --listen unix://$(RUN_DIR)/agent.sock \
		$(if $(wildcard /dev/vsock),--listen vsock://:1024) \
		--auth-token-file $(RUN_DIR)/token \
		--docker-listen unix://$(RUN_DIR)/docker.sock \
		--runtime-bin-dir $(RUN_DIR)/bin --data-device $(RUN_DIR)/data.img \
		--data-mount $(RUN_DIR)/data --docker-data-root $(RUN_DIR)/docker \
		--containerd-root $(RUN_DIR)/containerd --containerd-state $(RUN_DIR)/containerd-state \
		--containerd-config $(RUN_DIR)/containerd.toml --containerd-socket $(RUN_DIR)/containerd.sock \
		--docker-socket $(RUN_DIR)/dockerd.sock --docker-exec-root $(RUN_DIR)/docker-exec \
		--sandbox-mount-root $(RUN_DIR)/shared \
		--state-dir $(RUN_DIR)/state --disk-state-dir $(RUN_DIR)/disk --log-dir $(RUN_DIR)/log \
		--set-clock=$(or $(SET_CLOCK),false) --log-format text

.PHONY: test
test: deps lint ## Install what is missing, lint, and run every test with the race detector.
	go test -race -count=1 -timeout 15m ./...

.PHONY: lint
lint: lint-api ## gofmt, go vet, golangci-lint, and the OpenAPI linters.
	@unformatted=$$(gofmt -l $(GO_FILES)); if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	go vet ./...
	$(LINT) run ./...

APILINT := scripts/apilint

# Redocly's telemetry and update check would leave the machine: both off.
.PHONY: lint-api
lint-api: ## redocly and spectral on openapi.yaml, pinned in scripts/apilint (make deps installs them); any warning fails.
	@test -x $(APILINT)/node_modules/.bin/redocly || { echo "the OpenAPI linters are not installed: run make deps"; exit 1; }
	REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true DO_NOT_TRACK=1 \
		$(APILINT)/node_modules/.bin/redocly lint --config $(APILINT)/.redocly.yaml openapi.yaml
	$(APILINT)/node_modules/.bin/spectral lint --fail-severity warn --ruleset $(APILINT)/.spectral.yaml openapi.yaml

.PHONY: e2e-vm
e2e-vm: deps ## Boot the agent as PID 1 of a QEMU VM and check it from the host.
	go test -count=1 -v -timeout 20m ./e2e/vm/

.PHONY: bench
bench: deps build ## Run the benchmarks against their peers.
	go test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

FUZZTIME ?= 20s

.PHONY: fuzz
fuzz: deps ## Fuzz every target for FUZZTIME (default 20s) each; a failing input is left in testdata/fuzz/.
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

.PHONY: generate
generate: ## Regenerate the server interface and client from openapi.yaml.
	go generate ./api/

.PHONY: clean
clean: ## Remove what the build made.
	rm -rf bin
