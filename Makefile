# Plain `make` lists the targets. Each target's line in that list is its
# `## ` comment.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go
# The services, each a `package main` folder; `make build` builds those that exist.
SERVICES := apiserver msgworker pushserver devicesim
# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 60s

.PHONY: help run build test test-short fmt vet services fuzz bench faults clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## Start RabbitMQ, Redis, the apiserver, 2 workers, 3 push servers and a 100-device fleet; Ctrl-C stops
	@bash deployments/local/run.sh

build: ## Build every service that exists into bin/
	@mkdir -p bin
	@for d in $(SERVICES); do \
		if [ -d "$$d" ] && find "$$d" -maxdepth 1 -name '*.go' ! -name '*_test.go' \
			-exec grep -l '^package main$$' {} + 2>/dev/null | grep -q .; then \
			echo "go build -o bin/$$d ./$$d"; \
			$(GO) build -o "bin/$$d" "./$$d"; \
		else \
			echo "skip $$d: no main package yet"; \
		fi; \
	done

test: services ## Start local services, check gofmt, vet, run all tests with -race
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted (run make fmt):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 9m ./...

test-short: ## Unit tests only (integration tests skipped), with -race
	$(GO) test -short -race ./...

fmt: ## Format the Go code
	gofmt -w .

vet: ## Run go vet
	$(GO) vet ./...

services: ## Make RabbitMQ (with management), Redis, a Redis Cluster and Redis Sentinel run on loopback
	@bash deployments/local/services.sh
	@bash deployments/local/redis-cluster.sh start
	@bash deployments/local/redis-sentinel.sh start

fuzz: ## Run every fuzz target of the module for FUZZTIME each (default 60s)
	@\
	found=0; \
	for pkg in $$($(GO) list ./...); do \
		list=$$($(GO) test -list '^Fuzz' "$$pkg"); \
		for f in $$(printf '%s\n' "$$list" | grep '^Fuzz' || true); do \
			found=1; \
			echo "go test -run '^\$$' -fuzz '^$$f\$$' -fuzztime $(FUZZTIME) $$pkg"; \
			$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
		done; \
	done; \
	if [ "$$found" = 0 ]; then echo "no fuzz targets found"; fi

bench: ## Start local services, run the benchmark (~7 min; BENCH_FLAGS=--quick: ~1.5 min), write bench/results/
	@if [ -f deployments/local/services.sh ]; then bash deployments/local/services.sh; fi
	$(GO) run ./bench $(BENCH_FLAGS)

faults: services ## The fault suite (~20 min, not in `make test`): private RabbitMQ/Redis killed, paused, frozen under load; writes bench/results/faults-*.md
	GW_FAULTS=1 GW_FAULTS_REPORT=$(CURDIR)/bench/results/faults-$$(date -u +%Y-%m-%dT%H%M).md \
		$(GO) test -count=1 -timeout 29m -run '^TestFaultSuite$$' -v ./devicesim/

clean: ## Remove bin/ and test leftovers (run/ stays: a local Redis may use it)
	rm -rf bin coverage.out coverage.html
	find . -name '*.test' -type f -delete
