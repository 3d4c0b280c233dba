# The two commands of the README: `make run` (the demo) and `make test` (the checks).
# The first Python >= 3.11 that actually runs (a pyenv shim may exist without its version).
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench install

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is needed" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m app.launch

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# `make bench BASELINE=<commit>` also runs ours as of that commit, side by side in the
# same run (bench.run --baseline): how a change is shown to cost nothing.
bench: install
	$(PY) -m bench.run $(if $(BASELINE),--baseline $(BASELINE))
	$(PY) -m bench.scaleout
	$(PY) -m bench.cluster
	$(PY) -m bench.garbage $(if $(BASELINE),--baseline $(BASELINE))
