# battwin — the two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# `make demo` has an environment of its own: what the full-stack demo runs (agent, amqtt, moto, boto3, dashboard),
# not TensorFlow, Playwright or the linters of the development one
DEMO_VENV  := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

.PHONY: demo test lint typecheck pytest bench gg-build clean venv audit lock pi-check pyversions

LOCKS  := requirements/dev.lock requirements/device.lock requirements/device-32bit.lock requirements/demo.lock
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes --no-header \
	-c requirements/constraints.txt

# installs from the lock only (hashes checked); the project itself goes in editable, without resolving anything
$(STAMP): requirements/dev.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes --only-binary=:all: -r requirements/dev.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(DEMO_STAMP): requirements/demo.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install --quiet --require-hashes --only-binary=:all: -r requirements/demo.lock
	$(DEMO_VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(DEMO_STAMP)

# regenerate the locks from pyproject.toml (keeps the versions already locked unless pyproject needs others)
lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml --all-extras -o requirements/dev.lock
	$(UV_COMPILE) pyproject.toml requirements/device.in --extra device --extra litert --extra ble \
		-c requirements/dev.lock -o requirements/device.lock
	$(UV_COMPILE) pyproject.toml requirements/device.in --extra device \
		-c requirements/dev.lock -o requirements/device-32bit.lock
	$(UV_COMPILE) pyproject.toml requirements/demo.in --extra device --extra litert --extra demo --extra cloud \
		-c requirements/dev.lock -o requirements/demo.lock

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/battwin demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# The quick tier: lint, types and every test not marked slow (under 4 minutes on a 2-core machine). It still starts
# each real component once -- mosquitto, moto server, pymodbus' server, a pty, the Greengrass IPC client, Chromium
# (tests/test_tiers.py fails when the selection below misses one). `make test` stays the complete run.
# Both tiers scale the tests' reply deadlines by BATTWIN_TEST_TIME_SCALE (default 4; tests/support.py).
.PHONY: quick
QUICK_MARK := not slow
quick: lint typecheck
	$(VENV)/bin/pytest -q -m "$(QUICK_MARK)" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench

gg-build: $(STAMP)
	$(PY) -m components.build

# the device path and the cloud handlers' tests (quick tier + every_python) on Python 3.12 and 3.13 too (venvs .venv-3.12, .venv-3.13 from a
# subset of requirements/dev.lock; tools/pyversions.py says which); PYVERSIONS_ARGS="--versions 3.13 -- -x" etc.
pyversions:
	$(PYTHON) tools/pyversions.py $(PYVERSIONS_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_VENV) greengrass-build .pytest_cache .mypy_cache .ruff_cache

# Known-vulnerability check of the pinned dependencies (needs PyPI's JSON API; see RELIABILITY.md)
audit: $(STAMP)
	$(PIP) install --quiet pip-audit==2.10.1
	$(PY) -c "import tomllib;d=tomllib.load(open('pyproject.toml','rb'));deps=d['project']['dependencies']+sum(d['project']['optional-dependencies'].values(),[]);print('\n'.join(sorted({x.split(';')[0].strip() for x in deps if '==' in x})))" > .audit-pins.txt
	$(VENV)/bin/pip-audit --requirement .audit-pins.txt --no-deps --disable-pip --strict

# Raspberry Pi userland check (root; ~10 min, first run longer): the device wheel installed from device.lock in a
# Debian arm64 userland under qemu-user, a NASA replay compared with this host's, `battwin run` to a host mosquitto.
# Needs debootstrap, mosquitto, mosquitto-clients and qemu-user-static >= 8 (bookworm-backports). hardware/README.md
pi-check: $(STAMP)
	PYTHON=$(abspath $(PY)) tools/pi_check/pi_check.sh
