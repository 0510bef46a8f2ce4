"""Base of the serial BMS drivers: owns (or borrows) a port and a FrameLink for one FrameSpec."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hardware.bms.options import DriverOptions, make_source_id, parse_common_options
from hardware.bms.polling import PolledSource
from hardware.errors import SourceConfigError
from hardware.transports.framing import FrameSpec, StreamFramer
from hardware.transports.link import FrameLink
from hardware.transports.serial_port import SerialLike, open_serial

if TYPE_CHECKING:
    from schema.source_settings import SourceSettings, SourceUrl

log = logging.getLogger(__name__)


def serial_source_kwargs(
    kind: str, url: SourceUrl, settings: SourceSettings, default_baud: int, extra_options: Iterable[str] = ()
) -> dict[str, Any]:
    """What every serial BMS driver's ``create`` reads from its URL: the device path (required), the common
    options (plus ``baud`` and the driver's ``extra_options``) and the baud rate; keyword arguments of
    the driver's source class."""
    if not url.path:
        raise SourceConfigError(f"source URL {url.raw!r}: missing serial device path ({kind}:/dev/ttyUSB0)")
    return {
        "source_id": make_source_id(kind, url.path),
        "path": url.path,
        "options": parse_common_options(url, settings, extra_options={"baud", *extra_options}),
        "baudrate": url.int_option("baud", default_baud),
    }


class SerialBmsSource(PolledSource):
    """``port`` injects a pyserial-like object (tests); otherwise ``path`` is opened with pyserial."""

    def __init__(
        self,
        source_id: str,
        spec: FrameSpec,
        *,
        path: str | None,
        baudrate: int,
        options: DriverOptions,
        port: SerialLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id, options, clock)
        self._clock = clock
        if path is None and port is None:
            raise ValueError("either path or port is required")
        self.path = path
        self.baudrate = baudrate
        self._spec = spec
        self._injected = port
        self._port: SerialLike | None = None
        self._link: FrameLink | None = None

    @property
    def link(self) -> FrameLink:
        if self._link is None:  # pragma: no cover - poll() connects first
            raise RuntimeError("not connected")
        return self._link

    def _connect(self) -> None:
        if self._injected is not None:
            port = self._injected
        else:
            assert self.path is not None
            port = open_serial(self.path, self.baudrate, self.options.gap_s, self.options.timeout_s)
        self._port = port
        self._link = FrameLink(
            port, StreamFramer(self._spec), self.options.timeout_s, self.options.gap_s, clock=self._clock
        )

    def _disconnect(self) -> None:
        port, self._port, self._link = self._port, None, None
        if port is not None and port is not self._injected:
            try:
                port.close()
            except OSError as exc:
                log.debug("%s: closing port: %s", self.source_id, exc)
