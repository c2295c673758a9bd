# make serve / make test / make check / make bench: exactly what the README and .ci/run call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-deps check bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama-cpp-python compiles from source the first time (minutes on 2 cores); pip caches the wheel.
# scripts/fetch-smart-turn: the end-of-turn model, out of the pipecat-ai wheel (README.md).
$(STAMP): pyproject.toml scripts/fetch-smart-turn | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local,dev]'
	$(BIN)/python scripts/fetch-smart-turn
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/realtime-relay serve --host $(HOST) --port $(PORT)

# Chromium and the Node clients' packages for the end-to-end tests (scripts/test-deps).
test-deps:
	scripts/test-deps

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff check relay transceiver models loadgen tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
