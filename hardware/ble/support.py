"""Is BLE support installed? (aiobmsble needs Python >= 3.12 and the ``battwin[ble]`` extra.)"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from hardware.errors import SourceConfigError

#: the Python aiobmsble needs
MIN_PYTHON = (3, 12)
EXTRA = "battwin[ble]"


class BleSupportMissing(SourceConfigError):
    """A ``ble:`` source was asked for where aiobmsble cannot run: Python < 3.12, or the extra not installed."""


def ble_support_problem(python: tuple[int, int] | None = None) -> str | None:
    """Why ``ble:`` sources cannot work here, or None when they can (aiobmsble imports). ``python``: the
    interpreter's version unless given (tests)."""
    version = python or (sys.version_info[0], sys.version_info[1])
    running = f"{version[0]}.{version[1]}"
    if version < MIN_PYTHON:
        return (
            f"BLE sources need Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (aiobmsble), this is Python {running}; "
            f"install the agent on Python 3.12+ with the extra: pip install '{EXTRA}' (hardware/README.md, BLE)"
        )
    try:
        importlib.import_module("aiobmsble")
    except ImportError as exc:
        return f"BLE sources need aiobmsble, which is not installed ({exc}): pip install '{EXTRA}'"
    return None


def require_aiobmsble() -> ModuleType:
    """The aiobmsble package, or :class:`BleSupportMissing` saying what to install."""
    problem = ble_support_problem()
    if problem is not None:
        raise BleSupportMissing(problem)
    return importlib.import_module("aiobmsble")
