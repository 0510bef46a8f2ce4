"""Opening a serial port with pyserial, and the small surface the drivers use of it.

Drivers never import pyserial directly: they take any object with this surface (``SerialLike``), so
tests can inject a fake or a pty, and a real port is opened here with errors mapped to
:class:`~hardware.errors.SourceUnavailable`.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from hardware.errors import SourceUnavailable

log = logging.getLogger(__name__)


@runtime_checkable
class SerialLike(Protocol):
    """The part of ``serial.Serial`` the drivers use."""

    timeout: float | None

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


def open_serial(path: str, baudrate: int, read_timeout_s: float, write_timeout_s: float = 1.0) -> SerialLike:
    """Open ``path`` 8N1 at ``baudrate`` (exclusive). Raise SourceUnavailable if it cannot be opened."""
    try:
        import serial
    except ImportError as exc:  # pragma: no cover - pyserial is a device dependency
        raise SourceUnavailable("pyserial is not installed (install battwin[device])") from exc
    try:
        port = serial.Serial(
            port=path,
            baudrate=baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=read_timeout_s,
            write_timeout=write_timeout_s,
            exclusive=True,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SourceUnavailable(f"cannot open serial port {path}: {exc}") from exc
    log.info("opened serial port %s at %d baud", path, baudrate)
    return port
