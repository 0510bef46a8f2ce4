"""Fixtures for the hardware driver tests."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> None:
    # pymodbus logs every expected failure (timeouts, exceptions) at ERROR; keep test output readable
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
