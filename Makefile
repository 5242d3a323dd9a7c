# Quick start: `make demo` and `make test` each set up .venv, install, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test data bench clean

$(STAMP): pyproject.toml setup.py src/menet/estimation/_jacobi.c constraints.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# The built-in data set: Fashion-MNIST from Debian's dataset-fashion-mnist package,
# unless MENET_DATA_DIR points at a directory holding the IDX files.
data:
	@bash scripts/ensure-data.sh

demo: $(STAMP) data
	$(BIN)/menet demo

# ruff check first (the rules in pyproject.toml), then pytest.
# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: $(STAMP) data
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

bench: $(STAMP) data
	$(BIN)/python benchmarks/estimation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
