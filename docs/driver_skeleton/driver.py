"""EXAMPLE source: ``example:/dev/ttyUSB0[?baud=9600&cells=4&timeout=1 ...]`` (a template driver).

One poll = one request for register 0x10 and its reply. Everything shared — opening the port, retries,
reconnecting with backoff, the common URL options (timeout, retries, cells, plausibility limits), turning
only typed :class:`~hardware.errors.SourceError` out of ``poll()`` — comes from
:class:`~hardware.bms.serial_source.SerialBmsSource`; a driver adds the request and the decoding.

Register it (README.md, "Adding a driver")::

    from hardware.registry import register
    register("example", "docs.driver_skeleton.driver:create")
"""

from __future__ import annotations

import time
from collections.abc import Callable

from docs.driver_skeleton.decode import decode_frame
from docs.driver_skeleton.framing import REG_STATUS, SPEC, build_frame
from hardware.bms.options import DriverOptions
from hardware.bms.polling import build_sample
from hardware.bms.serial_source import SerialBmsSource, serial_source_kwargs
from hardware.transports.serial_port import SerialLike
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_BAUD = 9600
#: the request, built once
STATUS_REQUEST = build_frame(REG_STATUS)


def _is_status(frame: bytes) -> bool:
    """Which received frame answers the request (a BMS may interleave other frames)."""
    return frame[1] == REG_STATUS


class ExampleSource(SerialBmsSource):
    def __init__(
        self,
        source_id: str,
        *,
        path: str | None,
        options: DriverOptions,
        baudrate: int = DEFAULT_BAUD,
        port: SerialLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id, SPEC, path=path, baudrate=baudrate, options=options, port=port, clock=clock)

    def _read(self) -> Sample:
        status = decode_frame(self.link.request(STATUS_REQUEST, _is_status))
        return build_sample(  # checks the plausibility limits, then builds the Sample
            self,
            voltage_v=status.pack_voltage_v,
            current_a=status.current_a,
            temperatures_c=(status.temperature_c,),
            soc_pct=float(status.soc_pct),
            cell_voltages_v=status.cell_voltages_v,
            reported_cells=len(status.cell_voltages_v),
        )


def create(url: SourceUrl, settings: SourceSettings, port: SerialLike | None = None) -> ExampleSource:
    """The registry's factory: the URL's path and options, the agent's ``[source]`` settings (``retries``)."""
    return ExampleSource(**serial_source_kwargs("example", url, settings, DEFAULT_BAUD), port=port)
