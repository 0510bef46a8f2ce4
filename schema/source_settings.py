"""What a battery source (a driver) reads: its parsed URL and the agent's ``[source]`` settings.

Both live here, below ``hardware`` (the drivers) and ``device_agent`` (the configuration that validates
them), so a driver factory is typed ``Callable[[SourceUrl, SourceSettings], Source]`` without either layer
importing the other upward.

The URL grammar: ``scheme:rest`` selects a driver — ``simulator``, ``replay:PATH``, ``jbd:/dev/ttyUSB0``,
``daly:/dev/ttyUSB0?address=0x40``, ``sbs:/dev/i2c-1?address=0x0b``, ``modbus-tcp://host:502?unit=1``,
``ble:AA:BB:CC:DD:EE:FF?type=jbd`` ...
A malformed URL or option raises :class:`SourceConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from schema.simulator_settings import SimulatorSettings

__all__ = [
    "SimulatorSettings",
    "SourceConfigError",
    "SourceError",
    "SourceSettings",
    "SourceUrl",
    "parse_source_url",
]


class SourceError(Exception):
    """Base class: reading the battery failed; no sample was produced (subclasses in ``hardware.errors``)."""


class SourceConfigError(SourceError, ValueError):
    """The source URL or its options are wrong (unknown scheme, bad address, missing file ...)."""


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


# The agent's ``[source]`` section (``device_agent.config.AgentConfig.source``); every driver's
# ``create(url, settings)`` receives it. (No docstring: it would change the configuration's JSON schema.)
class SourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    url: Annotated[str, Field(min_length=1, max_length=1024)] = "simulator"
    sample_interval_s: Annotated[float, Field(gt=0.0, le=3600.0, allow_inf_nan=False)] = 1.0
    #: consecutive failed polls after which the source is declared offline (alarm, data stale)
    offline_after_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    #: retries inside one poll before it counts as failed (a driver's ``retries=`` URL option overrides it)
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    #: what to do when a real source is offline; "simulator" only if explicitly set, and tagged
    fallback: Literal["none", "simulator"] = "none"
    #: replay: Unix time that the log's t_s = 0 maps to
    replay_start_ts: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
