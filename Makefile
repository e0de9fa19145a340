# Quick start: `make demo` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test test-fast lint format lock bench clean

# The virtual environment, with the project installed in editable mode and both extras, at the
# exact versions of constraints.txt (what the tests last ran with; `make lock` refreshes it).
$(VENV): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]' \
		|| { echo "Set PYTHON=/path/to/python3.11"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench,beam]" || { rm -rf $(VENV); exit 1; }
	touch $(VENV)

test: $(VENV)
	$(BIN)/python -m pytest -q

# ruff: the formatter's check and the linter (isort rules included), on the whole tree.
lint: $(VENV)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(VENV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Pin what the venv holds now (run after changing setup.cfg and passing `make test`).
lock: $(VENV)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^cxr' > constraints.txt

test-fast: $(VENV)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(VENV)
	$(BIN)/python examples/demo.py --out demo-output

bench: $(VENV)
	$(BIN)/python benchmarks/conversion.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/augment_speed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
