# omi-letta: `make run` serves the whole chain on local defaults; `make test` checks everything.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch; installed first so the project's `torch>=2.2` does not pull a CUDA build.
TORCH  ?= torch==2.13.0
APT_PACKAGES := libopus0 libsndfile1 espeak-ng sox postgresql chromium tcpdump redis-server systemd

.DEFAULT_GOAL := help
.PHONY: help run test lint typecheck unit bench system-deps install env clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps: ## install libopus, espeak-ng, sox, PostgreSQL, Chromium, tcpdump, Redis and systemd-analyze for tests (apt; brew on macOS)
	@if [ "$$(uname)" = "Darwin" ]; then \
		command -v brew >/dev/null || { echo "Install Homebrew, then: brew install opus espeak-ng sox libsndfile"; exit 1; }; \
		brew list opus >/dev/null 2>&1 || brew install opus espeak-ng sox libsndfile; \
	elif command -v dpkg >/dev/null; then \
		missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "Installing system packages:$$missing"; \
			SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
			$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
		fi; \
	else echo "Install libopus, espeak-ng and sox with your package manager."; fi

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: system-deps $(STAMP) ## create .venv and install the project with its test tools

.env:
	$(BIN)/python scripts/init_env.py

env: .env ## write .env from .env.example with a fresh random ADMIN_KEY

# Unless LETTA_BASE_URL is set, a local Letta server (omi-letta letta-local) runs beside the service;
# Ctrl-C stops the service, then the EXIT trap stops Letta and its PostgreSQL.
run: install .env ## serve on 0.0.0.0:8000 with local models and SQLite, and a local Letta server
	@$(BIN)/omi-letta letta-local --unless-configured & letta=$$!; \
	trap 'kill -TERM $$letta 2>/dev/null; wait $$letta' EXIT; \
	trap 'exit 130' INT TERM; \
	$(BIN)/omi-letta serve

lint: install ## ruff lint and format check, and the import layers (import-linter)
	$(BIN)/ruff check app core ingest memory tests bench scripts
	$(BIN)/ruff format --check app core ingest memory tests bench scripts
	$(BIN)/lint-imports --no-logo

typecheck: install ## mypy
	$(BIN)/mypy

unit: install ## only the fast tests
	$(BIN)/pytest -q tests/unit

# Test files run on TEST_WORKERS processes (pytest-xdist), a file's tests together on one.
TEST_WORKERS ?= 3

test: lint typecheck ## lint, type-check and run every test
	$(BIN)/pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --durations=10

bench: install ## run the benchmarks in bench/ (results go in docs/benchmarks.md)
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/streams.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/diarize.py
	$(BIN)/python bench/live_labels.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/mcp.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/app_list.py

clean: ## remove the virtualenv and caches (keeps DATA_DIR)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
