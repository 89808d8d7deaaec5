# Every target sets up .venv itself, so a fresh clone needs nothing else. `demo` installs the package's own
# dependencies; `test`, `lint`, `bench` and `install` add the test extra (pytest, mlflow, ruff, mypy, ...).
# The installer is uv, from the package index into .venv (by the interpreter's own pip, else by ensurepip's);
# .venv gets pip too. uv does not read pip's configuration, so pip's find-links (a machine's local wheels, e.g. the
# CPU build of torch) are passed on to it. The test extra is installed with --compile-bytecode: uv writes no .pyc by
# default and, where PYTHONDONTWRITEBYTECODE is set (as on the CI box), every process of the suite (xdist workers and
# the ~40 CLI subprocesses of the crash tests) then compiles torch, lightning and polars again: +10 s per import, a
# fresh clone's suite took 14 min 43 s instead of 7 min 19 s. `make demo` skips it (4 processes: compiling all of
# site-packages costs more than it saves, 372 s vs 346 s measured).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
CORE := $(VENV)/.installed-core
FULL := $(VENV)/.installed-test
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PY) -m pip config get global.find-links 2>/dev/null))
INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python $(addprefix --find-links ,$(FIND_LINKS)) pip

.PHONY: demo test lint install bench clean

$(BIN)/uv:
	$(PY) -m venv --without-pip $(VENV)
	$(PY) -m pip --python $(BIN)/python install -q uv==$(UV_VERSION) || \
		($(BIN)/python -m ensurepip >/dev/null && $(BIN)/python -m pip install -q uv==$(UV_VERSION))

$(CORE): pyproject.toml | $(BIN)/uv
	$(INSTALL) -e .
	touch $@

$(FULL): pyproject.toml | $(BIN)/uv
	$(INSTALL) --compile-bytecode -e ".[test]"
	touch $@ $(CORE)

install: $(FULL)

demo: $(CORE)
	$(BIN)/gogooku3 run

test: $(FULL)
	$(BIN)/python -m pytest -n 2 tests

lint: $(FULL)
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks && $(BIN)/mypy

bench: $(FULL)
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_model.py --no-gat

clean:
	rm -rf $(VENV) data output runs lightning_logs
