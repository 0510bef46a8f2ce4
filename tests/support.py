"""Paths and helpers shared by tests (importable as ``tests.support``)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
NASA_LOGS = DATA / "bms-logs" / "nasa_pcoe"
NASA_CELLS = DATA / "cells" / "nasa"
IN_CI = os.environ.get("CI", "").lower() == "true"
F = TypeVar("F", bound=Callable[..., Any])


def need_shared_data() -> None:
    if not NASA_LOGS.is_dir():
        if IN_CI:
            pytest.fail(f"shared data missing at {DATA}")
        pytest.skip(f"shared data not found at {DATA}")


def require_module(name: str, reason: str | None = None) -> object:
    """``pytest.importorskip`` on a developer's machine; under CI=true a missing module is a failure (CI
    installs everything from the lock, so a skip there would hide a test that never ran)."""
    if IN_CI:
        import importlib

        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"{name} cannot be imported and CI=true requires it: {exc}", pytrace=False)
    return pytest.importorskip(name, reason=reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


# Deadlines in tests are written for an idle machine; every one that could decide pass/fail goes through
# ``scaled`` so a loaded 2-core runner gets room. BATTWIN_TEST_TIME_SCALE multiplies them (default 4; a fast
# idle workstation may set 1). A real hang still fails: a scaled deadline is seconds, not minutes.
TIME_SCALE = float(os.environ.get("BATTWIN_TEST_TIME_SCALE", "4"))


def scaled(seconds: float) -> float:
    """``seconds`` times BATTWIN_TEST_TIME_SCALE (for timeouts a healthy reply must beat, and the delays
    that must outlast them: scaling both keeps their order)."""
    if TIME_SCALE <= 0:
        raise ValueError(f"BATTWIN_TEST_TIME_SCALE must be > 0, not {TIME_SCALE}")
    return seconds * TIME_SCALE


# The real components the quick tier (`make quick`) must still touch. The fixture that starts one carries
# ``@real_component(name)`` (below its ``@pytest.fixture``); tests/test_tiers.py collects the quick selection
# and fails when no test in it uses a fixture of each component.
REAL_COMPONENTS = ("mosquitto", "moto server", "pymodbus server", "pty", "greengrass ipc client", "chromium")
REAL_COMPONENT_ATTR = "battwin_real_component"


def real_component(name: str) -> Callable[[F], F]:
    if name not in REAL_COMPONENTS:
        raise ValueError(f"unknown real component {name!r}; known: {', '.join(REAL_COMPONENTS)}")

    def mark(func: F) -> F:
        setattr(func, REAL_COMPONENT_ATTR, name)
        return func

    return mark


SLOW_FIXTURE_ATTR = "battwin_slow_fixture"


def slow_fixture(func: F) -> F:
    """A fixture whose setup takes more than a few seconds (below its ``@pytest.fixture``): every test that
    uses it, directly or through another fixture, is marked ``slow`` (tests/conftest.py)."""
    setattr(func, SLOW_FIXTURE_ATTR, True)
    return func
