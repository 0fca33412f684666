# Two commands do everything on a fresh machine:
#   make run   - set up, start the embedded default (tansu + PostgreSQL + workers), run the main job
#   make test  - set up, run the whole test suite (real broker, real PostgreSQL)
# Other targets: make lint, make bench, make gpu-check, make deps, make clean.

VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench gpu-check deps clean

$(STAMP): pyproject.toml ops/bootstrap.sh
	bash ops/bootstrap.sh $(VENV)
	touch $(STAMP)

deps: $(STAMP)

run: $(STAMP)
	$(PY) -m ops.cli up

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m ops.cli bench all

# the CUDA paths in one run (<= 5 min): on a machine without CUDA, the CPU half and "not met" for the rest
gpu-check: $(STAMP)
	$(PY) -m ops.cli bench gpu

clean:
	rm -rf $(VENV) var artifacts .pytest_cache .mypy_cache .ruff_cache
