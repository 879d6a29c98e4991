# The two commands a newcomer needs: `make demo` and `make test`.

# The first of these that runs and is that version: a pyenv shim exists for every installed
# version but runs only the active ones, so the versions' own folders are tried as well.
find_python = $(shell for p in python$(1) $$HOME/.pyenv/versions/$(1).*/bin/python$(1) \
  /usr/local/bin/python$(1) /usr/bin/python$(1); do "$$p" -c 'import sys; \
  sys.exit("%d.%d" % sys.version_info[:2] != "$(1)")' 2>/dev/null && { echo "$$p"; break; }; done)

PYTHON    ?= $(call find_python,3.11)
PYTHON313 ?= $(call find_python,3.13)
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# A second environment on Python 3.13 for `make test`, without the embeddings extra: the
# package index has only CUDA builds of torch for 3.13 (gigabytes), so that extra is tested on
# 3.11 and its tests are marked `embeddings`.
VENV313   := .venv-3.13
PY313     := $(VENV313)/bin/python
STAMP313  := $(VENV313)/.installed
# Every install takes its versions from constraints.txt, the set we test (pyproject.toml
# holds the ranges stead accepts). `make constraints` refreshes it.
INSTALL   := -m pip install --quiet -c constraints.txt

.PHONY: demo test up bench bench-peers chaos soak lint typecheck constraints clean

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) $(INSTALL) -e '.[dev,embeddings,bench]'
	@touch $(STAMP)

$(STAMP313): pyproject.toml constraints.txt
	@test -n "$(PYTHON313)" || { echo "error: Python 3.13 not found (set PYTHON313=/path/to/python3.13)" >&2; exit 2; }
	$(PYTHON313) -m venv $(VENV313)
	$(PY313) -m pip install --quiet --upgrade pip
	$(PY313) $(INSTALL) -e '.[dev,bench]'
	@touch $(STAMP313)

demo: $(STAMP)
	$(VENV)/bin/stead demo

# The approvals inbox is tested in a real headless browser: Debian's chromium and chromedriver.
BROWSER := /usr/bin/chromedriver

$(BROWSER):
	@command -v apt-get >/dev/null 2>&1 || { echo "error: the inbox tests need chromium and chromedriver at /usr/bin (Debian: apt-get install chromium chromium-driver)" >&2; exit 2; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The whole suite on 3.11, then on 3.13 everything that does not need torch (deselected by its
# marker, not skipped). make stops at the first failing run, and pytest fails (exit 5) when a
# run selects no test at all.
test: $(STAMP) $(STAMP313) $(BROWSER)
	$(PY) -m pytest
	$(PY313) -m pytest -m 'not live and not embeddings'

up: $(STAMP)
	$(VENV)/bin/stead up

bench: $(STAMP)
	$(PY) -m bench

# stead next to plain temporalio (and the engine's floor), pydantic-ai and the OpenAI Agents
# SDK on Temporal, LangGraph + PostgreSQL and DBOS (~20 min; PEERS_ARGS=--quick).
bench-peers: $(STAMP)
	$(PY) $(INSTALL) -e '.[bench]'
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

# Re-resolve constraints.txt on both Pythons: the newest versions pyproject.toml admits, or
# with KEEP=1 only what is new or no longer fits (see .ci/constraints.py). Then `make test`.
constraints:
	@test -n "$(PYTHON)" -a -n "$(PYTHON313)" || { echo "error: needs Python 3.11 and 3.13 (set PYTHON, PYTHON313)" >&2; exit 2; }
	$(PYTHON) .ci/constraints.py $(PYTHON) $(PYTHON313) $(if $(KEEP),--keep constraints.txt) > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(VENV313) .stead .pytest_cache
