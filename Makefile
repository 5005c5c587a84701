# `make run` serves the whole portal on this machine; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements/dev.txt | cksum | cut -d' ' -f1)

.PHONY: install run manage test lint lock check-python clean bench bench-ingest bench-cycles \
	bench-charging bench-authorize bench-floor

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'

$(STAMP): requirements/dev.txt | check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --requirement requirements/dev.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m devstack run

# make manage ARGS="create_service_token demo --scopes accounting,usage"
manage: install
	$(BIN)/python -m devstack manage $(ARGS)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-pin every dependency from pyproject.toml (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --extra embedded --extra dev --python-version 3.11 \
		-o requirements/dev.txt -q --custom-compile-command "make lock"
	uv pip compile pyproject.toml --python-version 3.11 -c requirements/dev.txt \
		-o requirements/prod.txt -q --custom-compile-command "make lock"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles

bench: install
	$(BIN)/python -m bench.ledger_ops

# Batch usage ingestion over HTTP (gunicorn, loopback only), then its settlement.
bench-ingest: install
	$(BIN)/python -m bench.http_ingest $(ARGS)

bench-cycles: install
	$(BIN)/python -m bench.http_cycles $(ARGS)

bench-charging: install
	$(BIN)/python -m bench.charging $(ARGS)

# Authorize decisions over HTTP with wrk (apt-get install wrk), next to /health.
bench-authorize: install
	$(BIN)/python -m bench.http_authorize $(ARGS)

# The smallest requests with authorize's round trips, next to /health and authorize (wrk).
bench-floor: install
	$(BIN)/python -m bench.http_floor $(ARGS)
