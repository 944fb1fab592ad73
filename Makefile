# arcbox-agent. `make` alone lists the targets.

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN      := bin/arcbox-agent
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
build: ## Build the static agent binary into bin/.
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/arcbox-agent

.PHONY: run
run: deps build ## Run the agent on built-in defaults: loopback TCP, a unix socket, vsock where there is one.
	@mkdir -p $(RUN_DIR)
	$(BIN) --listen tcp://127.0.0.1:$(PORT) --listen unix://$(RUN_DIR)/agent.sock \
		$(if $(wildcard /dev/vsock),--listen vsock://:1024) \
		--state-dir $(RUN_DIR)/state --log-dir $(RUN_DIR)/log \
		--set-clock=$(or $(SET_CLOCK),false) --log-format text

.PHONY: test
test: deps lint ## Install what is missing, lint, and run every test with the race detector.
	go test -race -count=1 -timeout 15m ./...

.PHONY: lint
lint: ## gofmt, go vet and golangci-lint.
	@unformatted=$$(gofmt -l $(GO_FILES)); if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	go vet ./...
	$(LINT) run ./...

.PHONY: e2e-vm
e2e-vm: deps ## Boot the agent as PID 1 of a QEMU VM and check it from the host.
	go test -count=1 -v -timeout 20m ./e2e/vm/

.PHONY: bench
bench: deps build ## Run the benchmarks against their peers.
	go test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

.PHONY: generate
generate: ## Regenerate the server interface and client from openapi.yaml.
	go generate ./api/

.PHONY: clean
clean: ## Remove what the build made.
	rm -rf bin
