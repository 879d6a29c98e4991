# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test up bench bench-peers chaos soak lint typecheck clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embeddings,bench]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stead demo

# The approvals inbox is tested in a real headless browser: Debian's chromium and chromedriver.
BROWSER := /usr/bin/chromedriver

$(BROWSER):
	@command -v apt-get >/dev/null 2>&1 || { echo "error: the inbox tests need chromium and chromedriver at /usr/bin (Debian: apt-get install chromium chromium-driver)" >&2; exit 2; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: $(STAMP) $(BROWSER)
	$(PY) -m pytest

up: $(STAMP)
	$(VENV)/bin/stead up

bench: $(STAMP)
	$(PY) -m bench

# stead next to plain temporalio, LangGraph + PostgreSQL and DBOS (~15 min; PEERS_ARGS=--quick).
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.peers $(PEERS_ARGS)

# Faults, kills and restarts on a throwaway loopback stack (~5 min); refreshes RELIABILITY.md.
chaos: $(STAMP)
	$(PY) -m chaos --reliability-md RELIABILITY.md

# 50 runs in flight for 3 minutes on a throwaway stack; SOAK_ARGS="--concurrency 20 --minutes 1"
soak: $(STAMP)
	$(PY) -m chaos.soak $(SOAK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .stead .pytest_cache
