# battwin — the two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench gg-build clean venv audit

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[device,ml,cloud,dev]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/battwin demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m bench

gg-build: $(STAMP)
	$(PY) -m components.build

clean:
	rm -rf $(VENV) greengrass-build .pytest_cache .mypy_cache .ruff_cache

# Known-vulnerability check of the pinned dependencies (needs PyPI's JSON API; see RELIABILITY.md)
audit: $(STAMP)
	$(PIP) install --quiet pip-audit==2.10.1
	$(PY) -c "import tomllib;d=tomllib.load(open('pyproject.toml','rb'));deps=d['project']['dependencies']+sum(d['project']['optional-dependencies'].values(),[]);print('\n'.join(sorted({x.split(';')[0].strip() for x in deps if '==' in x})))" > .audit-pins.txt
	$(VENV)/bin/pip-audit --requirement .audit-pins.txt --no-deps --disable-pip --strict
