# The two commands of the README's quick start: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install bench bench-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# The committed sample site ends on 2026-11-01: the demo looks at it as of that day.
	$(BIN)/insights run --as-of 2026-11-01

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/dbt_build.py
	$(BIN)/python bench/batch_scoring.py
	$(BIN)/python bench/learning.py
	$(BIN)/python bench/serving_latency.py --publish-nice 19

# The whole pipeline at 1M, 3M and 10M events (about 40 minutes on the 2-core machine).
bench-scale: $(STAMP)
	$(BIN)/python bench/pipeline_scale.py --events 1000000 --events 3000000 --events 10000000

clean:
	rm -rf $(VENV) warehouse datastore out .pytest_cache
