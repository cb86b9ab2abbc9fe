# Two commands on a fresh machine:  `make dev` (set up and run the bridge), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup pin dev test lint unit integration e2e fuzz fuzz-short faults faults-short bench-ingest bench-sender bench-e2e bench-management doctor clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

setup: $(STAMP)

pin: setup  ## requirements.txt (what Azure installs) from requirements.in, pinned as constraints.txt
	$(BIN)/python -m scripts.pin_requirements

dev: setup  ## the dev host: embedded PostgreSQL, local queue, HTTP on 127.0.0.1:7071/api
	$(BIN)/python -m local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

doctor: setup
	@mkdir -p .local
	$(BIN)/azure-functions-doctor doctor --hosting-plan flex-consumption --summary-json .local/doctor.json
	$(BIN)/python scripts/check_doctor.py .local/doctor.json

test: lint doctor  ## everything CI runs: lint, types, doctor, unit + integration + e2e tests
	$(BIN)/pytest -m "not slow"

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

e2e: setup
	$(BIN)/pytest tests/e2e

fuzz-short: setup  ## the fuzz suite alone: corpus + 300 hypothesis batches on real PostgreSQL
	$(BIN)/pytest tests/fuzz

fuzz: setup  ## the full fuzz run: 100,000 hostile signed webhooks into the dev host (scripts/fuzz_webhook.py)
	$(BIN)/python -m scripts.fuzz_webhook

faults-short: setup  ## the fault suite alone, short size (~4-5 min; also part of `make test`)
	$(BIN)/python -m scripts.fault_suite

faults: setup  ## the fault suite at full size (10,000 messages, 45-s outages; ~25 min here): .local/faults/summary-full.md
	$(BIN)/python -m scripts.fault_suite --scale full

bench-ingest: setup  ## benchmark: signed webhooks against the dev host (see bench/ingest/README.md)
	$(BIN)/python -m bench.ingest

bench-sender: setup  ## benchmark: 4 sender workers against the simulator at 80/s and 1,000/s
	$(BIN)/python -m bench.sender

bench-e2e: setup  ## benchmark: user message -> agent reply at the simulator, 100 conversations/s
	$(BIN)/python -m bench.e2e

bench-management: setup  ## benchmark: management reads on 10 M messages (pages, search, analytics)
	$(BIN)/python -m bench.management

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
