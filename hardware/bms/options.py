"""URL options every wired driver shares (timeouts, retries, backoff, plausibility limits).

Common options (all optional)::

    timeout=1.0        reply timeout per request, seconds
    gap=0.1            quiet time on the line that ends a reply, seconds (serial only)
    retries=N          attempts after the first inside one poll (default: the agent's source.retries)
    backoff_min_s=0.5  reconnect delay after the first failed poll; doubles per failure ...
    backoff_max_s=30   ... up to this
    cells=N            series cell count (limits pack voltage; must match what the BMS reports)
    max_current_a=1000 |current| above this is implausible
    min_temp_c=-40, max_temp_c=120

Unknown option names are a SourceConfigError (a typo must not be silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from hardware.bms.plausibility import PlausibilityLimits
from hardware.errors import SourceConfigError
from schema.source_settings import SourceSettings, SourceUrl

COMMON_OPTIONS = frozenset(
    {
        "timeout",
        "gap",
        "retries",
        "backoff_min_s",
        "backoff_max_s",
        "cells",
        "max_current_a",
        "min_temp_c",
        "max_temp_c",
    }
)


@dataclass(frozen=True, slots=True)
class DriverOptions:
    timeout_s: float = 1.0
    gap_s: float = 0.1
    retries: int = 2
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    limits: PlausibilityLimits = field(default_factory=PlausibilityLimits)


def _positive(url: SourceUrl, name: str, default: float, allow_zero: bool = False) -> float:
    value = url.float_option(name, default)
    if value < 0 or (value == 0 and not allow_zero):
        raise SourceConfigError(f"source URL {url.raw!r}: {name} must be {'>= 0' if allow_zero else '> 0'}")
    return value


def parse_common_options(
    url: SourceUrl,
    settings: SourceSettings,
    extra_options: Iterable[str] = (),
    default_timeout_s: float = 1.0,
) -> DriverOptions:
    allowed = COMMON_OPTIONS | frozenset(extra_options)
    unknown = sorted(set(url.query) - allowed)
    if unknown:
        raise SourceConfigError(
            f"source URL {url.raw!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    retries = url.int_option("retries", settings.retries)
    if not 0 <= retries <= 10:
        raise SourceConfigError(f"source URL {url.raw!r}: retries must be 0..10")
    cells = url.int_option("cells", 0)
    if not 0 <= cells <= 256:
        raise SourceConfigError(f"source URL {url.raw!r}: cells must be 1..256")
    backoff_min_s = _positive(url, "backoff_min_s", 0.5, allow_zero=True)
    backoff_max_s = _positive(url, "backoff_max_s", max(30.0, backoff_min_s), allow_zero=True)
    if backoff_max_s < backoff_min_s:
        raise SourceConfigError(f"source URL {url.raw!r}: backoff_max_s < backoff_min_s")
    min_temp_c = url.float_option("min_temp_c", -40.0)
    max_temp_c = url.float_option("max_temp_c", 120.0)
    if max_temp_c <= min_temp_c:
        raise SourceConfigError(f"source URL {url.raw!r}: max_temp_c must exceed min_temp_c")
    limits = PlausibilityLimits(
        max_abs_current_a=_positive(url, "max_current_a", 1000.0),
        temperature_min_c=min_temp_c,
        temperature_max_c=max_temp_c,
        cells=cells or None,
    )
    timeout_s = _positive(url, "timeout", default_timeout_s)
    return DriverOptions(
        timeout_s=timeout_s,
        gap_s=min(_positive(url, "gap", 0.1), timeout_s),
        retries=retries,
        backoff_min_s=backoff_min_s,
        backoff_max_s=backoff_max_s,
        limits=limits,
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]+")


def make_source_id(scheme: str, *parts: object) -> str:
    """``jbd`` + ``/dev/ttyUSB0`` → ``jbd:ttyUSB0``; characters a Sample's source_id forbids become ``_``."""
    cleaned = []
    for part in parts:
        text = str(part)
        if text.startswith("/dev/"):
            text = text[len("/dev/") :]
        text = _UNSAFE.sub("_", text).strip("_")
        if text:
            cleaned.append(text)
    return ":".join([scheme, *cleaned])[:128]
