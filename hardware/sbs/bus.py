"""The smbus2 ``SMBus`` surface the SBS driver uses, and opening ``/dev/i2c-N``."""

from __future__ import annotations

import re
from typing import Protocol

from hardware.errors import SourceConfigError, SourceUnavailable

_I2C_PATH = re.compile(r"^/dev/i2c-(\d+)$")


class SMBusLike(Protocol):
    pec: int

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def read_block_data(self, i2c_addr: int, register: int, force: bool | None = None) -> list[int]: ...

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None: ...

    def close(self) -> None: ...


def bus_number(path: str) -> int:
    match = _I2C_PATH.match(path)
    if not match:
        raise SourceConfigError(f"SMBus device {path!r} is not of the form /dev/i2c-N")
    return int(match.group(1))


def open_bus(path: str, pec: bool) -> SMBusLike:
    try:
        from smbus2 import SMBus
    except ImportError as exc:  # pragma: no cover - smbus2 is a device dependency
        raise SourceUnavailable("smbus2 is not installed (install battwin[device])") from exc
    try:
        bus = SMBus(bus_number(path))
    except OSError as exc:
        raise SourceUnavailable(f"cannot open {path}: {exc}") from exc
    if pec:
        try:
            bus.pec = 1
        except OSError as exc:
            bus.close()
            raise SourceUnavailable(f"{path}: the adapter cannot do SMBus PEC: {exc}") from exc
    return bus
