"""Paths and helpers shared by tests (importable as ``tests.support``)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
NASA_LOGS = DATA / "bms-logs" / "nasa_pcoe"
NASA_CELLS = DATA / "cells" / "nasa"
IN_CI = os.environ.get("CI", "").lower() == "true"


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
