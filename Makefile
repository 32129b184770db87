# One entry point. `make test` and `make demo` work on a fresh machine: they create .venv,
# install vitscope with its test extras (torch pinned to the local CPU wheel through
# constraints-ci.txt, not in the package), and run.
PY ?= python3
VENV ?= .venv
# test processes (pytest-xdist; a test file runs in one process, so module fixtures are built once)
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-ci.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints-ci.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

demo: $(STAMP)
	$(BIN)/vitscope demo

bench: $(STAMP)
	$(BIN)/python benchmarks/forward.py

clean:
	rm -rf $(VENV) runs build *.egg-info
