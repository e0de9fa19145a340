# Quick start: `make demo` and `make test`. Both build .venv first (`make venv` alone).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: venv demo test test-fast lint format lock bench clean

# The virtual environment, with the project installed in editable mode and its extras, at the
# exact versions of constraints.txt (what the tests last ran with; `make lock` refreshes it).
# The stamp is written last: a build that was interrupted is never taken for a finished one.
STAMP := $(VENV)/.cxr-installed

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]' \
		|| { echo "Set PYTHON=/path/to/python3.11"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench,beam]" || { rm -rf $(VENV); exit 1; }
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff: the formatter's check and the linter (isort rules included), on the whole tree.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Pin what the venv holds now (run after changing setup.cfg and passing `make test`).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^cxr' > constraints.txt

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo-output

bench: $(STAMP)
	$(BIN)/python benchmarks/conversion.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/augment_speed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
