"""Source URLs → source objects.

``scheme:rest`` URLs select a driver: ``simulator``, ``replay:PATH``, ``jbd:/dev/ttyUSB0``,
``daly:/dev/ttyUSB0?address=0x40``, ``jk:/dev/ttyUSB0``, ``sbs:/dev/i2c-1?address=0x0b``,
``modbus-tcp://host:502?unit=1&map=sunspec``, ``modbus-rtu:/dev/ttyUSB0?baud=9600&unit=1&map=FILE.yaml``.

Drivers are imported lazily (by dotted path) so a device without, say, pymodbus can still run a JBD pack.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hardware.errors import SourceConfigError
from hardware.source import Source


@dataclass(frozen=True)
class SourceUrl:
    """A parsed source URL. ``path`` is the device/file path, ``host``/``port`` for network sources."""

    raw: str
    scheme: str
    path: str
    host: str | None = None
    port: int | None = None
    query: dict[str, str] = field(default_factory=dict)

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, default)

    def int_option(self, name: str, default: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            return int(raw, 0)
        except ValueError:
            raise SourceConfigError(f"source URL {self.raw!r}: option {name}={raw!r} is not an integer") from None

    def float_option(self, name: str, default: float) -> float:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SourceConfigError(f"source URL {self.raw!r}: option {name}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise SourceConfigError(f"source URL {self.raw!r}: option {name} must be finite")
        return value


def parse_source_url(url: str) -> SourceUrl:
    url = original = url.strip()
    if not url:
        raise SourceConfigError("source URL is empty")
    if ":" not in url.split("?", 1)[0]:
        # bare scheme, e.g. "simulator" or "simulator?seed=3"
        url = url.replace("?", ":?", 1) if "?" in url else url + ":"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise SourceConfigError(f"source URL {url!r} has no scheme (expected e.g. 'jbd:/dev/ttyUSB0')")
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise SourceConfigError(f"source URL {url!r}: malformed query string {parts.query!r}") from None
    try:
        port = parts.port
    except ValueError:
        raise SourceConfigError(f"source URL {url!r}: invalid port") from None
    path = parts.path
    if parts.netloc and not parts.hostname:
        raise SourceConfigError(f"source URL {url!r}: invalid host")
    return SourceUrl(raw=original, scheme=scheme, path=path, host=parts.hostname, port=port, query=query)


SourceFactory = Callable[[SourceUrl, Any], Source]

#: scheme → "module:function"; the function takes (SourceUrl, SourceSettings) and returns a Source.
_FACTORIES: dict[str, str] = {
    "simulator": "hardware.simulator.source:create",
    "sim": "hardware.simulator.source:create",
    "replay": "hardware.replay:create",
    "jbd": "hardware.bms.jbd.driver:create",
    "daly": "hardware.bms.daly.driver:create",
    "jk": "hardware.bms.jk.driver:create",
    "sbs": "hardware.sbs.driver:create",
    "modbus-tcp": "hardware.modbus.driver:create_tcp",
    "modbus-rtu": "hardware.modbus.driver:create_rtu",
}


def register(scheme: str, target: str) -> None:
    """Register a driver factory by dotted path ``module:function``."""
    _FACTORIES[scheme.lower()] = target


def known_schemes() -> list[str]:
    return sorted(_FACTORIES)


def create_source(url: str, settings: Any) -> Source:
    """Build (not open) the source a URL names. ``settings`` is the agent's ``SourceSettings``."""
    parsed = parse_source_url(url)
    target = _FACTORIES.get(parsed.scheme)
    if target is None:
        raise SourceConfigError(
            f"unknown source scheme {parsed.scheme!r} in {url!r}; known: {', '.join(known_schemes())}"
        )
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceConfigError(
            f"source {parsed.scheme!r} needs a package that is not installed: {exc.name} (install battwin[device])"
        ) from exc
    factory: SourceFactory = getattr(module, func_name)
    return factory(parsed, settings)
