"""Source URLs → source objects: the table of drivers, by URL scheme.

``scheme:rest`` URLs select a driver: ``simulator``, ``replay:PATH``, ``jbd:/dev/ttyUSB0``,
``daly:/dev/ttyUSB0?address=0x40``, ``jk:/dev/ttyUSB0``, ``sbs:/dev/i2c-1?address=0x0b``,
``modbus-tcp://host:502?unit=1&map=sunspec``, ``modbus-rtu:/dev/ttyUSB0?baud=9600&unit=1&map=FILE.yaml``,
``ble:AA:BB:CC:DD:EE:FF?type=jbd`` (hardware.ble).

A driver is a factory ``(SourceUrl, SourceSettings) -> Source`` (:data:`SourceFactory`): it reads its
options from the parsed URL, the agent's defaults (``retries``, ``sample_interval_s`` ...) from the
settings, and builds the source without opening it. :func:`register` adds one to the table, either as the
function itself or as ``"module:function"``; the built-in drivers are registered that way below, by dotted
path, so they are imported lazily and a device without, say, pymodbus can still run a JBD pack.
README.md, "Adding a driver", walks through writing one (template: ``docs/driver_skeleton/``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from hardware.errors import SourceConfigError
from hardware.source import Source
from schema.source_settings import SourceSettings, SourceUrl, parse_source_url

__all__ = [
    "BUILTIN_DRIVERS",
    "SourceFactory",
    "create_source",
    "known_schemes",
    "parse_source_url",
    "register",
    "resolve",
    "unregister",
]

SourceFactory = Callable[[SourceUrl, SourceSettings], Source]

#: the drivers battwin ships: scheme → ``"module:function"`` (registered through :func:`register` below)
BUILTIN_DRIVERS: dict[str, str] = {
    "simulator": "hardware.simulator.source:create",
    "sim": "hardware.simulator.source:create",
    "replay": "hardware.replay:create",
    "jbd": "hardware.bms.jbd.driver:create",
    "daly": "hardware.bms.daly.driver:create",
    "jk": "hardware.bms.jk.driver:create",
    "sbs": "hardware.sbs.driver:create",
    "modbus-tcp": "hardware.modbus.driver:create_tcp",
    "modbus-rtu": "hardware.modbus.driver:create_rtu",
    # BLE packs through aiobmsble (battwin[ble], Python >= 3.12); listed everywhere, refused with a typed error
    # naming the extra where aiobmsble is missing
    "ble": "hardware.ble.source:create",
}

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]{0,31}$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: scheme → the factory, or its dotted path until first use
_FACTORIES: dict[str, SourceFactory | str] = {}


def register(scheme: str, factory: SourceFactory | str, *, replace: bool = False) -> None:
    """Make ``scheme:...`` URLs build sources with ``factory``: a callable ``(SourceUrl, SourceSettings) ->
    Source`` or its dotted path ``"package.module:function"`` (imported on first use).

    A scheme is lower-case (URL schemes are case-insensitive; ``urlsplit`` lower-cases them). Registering a
    scheme that already names a different driver is a :class:`ValueError` unless ``replace`` is set, so a
    plug-in cannot silently take over ``jbd``."""
    key = scheme.lower()
    if not _SCHEME.match(key):
        raise ValueError(f"driver scheme {scheme!r}: expected a URL scheme (a letter, then letters, digits, +.-)")
    if isinstance(factory, str):
        if not _TARGET.match(factory):
            raise ValueError(f"driver {scheme!r}: target {factory!r} is not 'package.module:function'")
    elif not callable(factory):
        raise TypeError(f"driver {scheme!r}: factory {factory!r} is not callable")
    current = _FACTORIES.get(key)
    if current is not None and current != factory and not replace:
        raise ValueError(f"driver scheme {key!r} is already registered ({current!r}); pass replace=True")
    _FACTORIES[key] = factory


def unregister(scheme: str) -> None:
    """Remove a scheme (a test's or a plug-in's); unknown schemes are ignored."""
    _FACTORIES.pop(scheme.lower(), None)


def known_schemes() -> list[str]:
    return sorted(_FACTORIES)


def resolve(scheme: str) -> SourceFactory:
    """The factory registered for ``scheme`` (importing its module if it was registered by dotted path)."""
    key = scheme.lower()
    target = _FACTORIES.get(key)
    if target is None:
        raise SourceConfigError(f"unknown source scheme {key!r}; known: {', '.join(known_schemes())}")
    if not isinstance(target, str):
        return target
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceConfigError(
            f"source {key!r} needs a package that is not installed: {exc.name} (install battwin[device])"
        ) from exc
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise SourceConfigError(f"source {key!r}: {target} is not a function")
    return factory


def create_source(url: str, settings: SourceSettings) -> Source:
    """Build (not open) the source a URL names. ``settings`` is the agent's ``[source]`` section."""
    parsed = parse_source_url(url)
    if parsed.scheme not in _FACTORIES:
        raise SourceConfigError(
            f"unknown source scheme {parsed.scheme!r} in {url!r}; known: {', '.join(known_schemes())}"
        )
    return resolve(parsed.scheme)(parsed, settings)


for _scheme, _target in BUILTIN_DRIVERS.items():
    register(_scheme, _target)
