"""JK source: ``jk:/dev/ttyUSB0[?baud=115200&cells=14 ...]``.

One poll = one "read all" request (command 0x06); the reply carries every value. The JK GPS/RS485
UART runs at 115200 baud by default. The BMS's UART protocol setting must be the 4E 57 one
("000 - 4G-GPS" on V18/V19 boards); with another setting it answers garbage (FramingError).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hardware.bms.jk.decode import decode_frame
from hardware.bms.jk.framing import SPEC, TYPE_REQUEST, build_read_all_request
from hardware.bms.options import DriverOptions
from hardware.bms.polling import build_sample
from hardware.bms.serial_source import SerialBmsSource, serial_source_kwargs
from hardware.errors import DecodeError
from hardware.transports.serial_port import SerialLike
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_BAUD = 115200

_REQUEST = build_read_all_request()


def _is_response(frame: bytes) -> bool:
    return frame[10] != TYPE_REQUEST


class JkSource(SerialBmsSource):
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
        status = decode_frame(self.link.request(_REQUEST, _is_response))
        missing = [
            name
            for name, value in (
                ("pack voltage (0x83)", status.pack_voltage_v),
                ("current (0x84)", status.current_a),
                ("SOC (0x85)", status.soc_pct),
            )
            if value is None
        ]
        if missing or not status.cell_voltages_v:
            raise DecodeError(f"jk: reply lacks {', '.join(missing) or 'cell voltages (0x79)'}")
        assert status.pack_voltage_v is not None and status.current_a is not None
        return build_sample(
            self,
            voltage_v=status.pack_voltage_v,
            current_a=status.current_a,
            temperatures_c=[float(t) for t in status.temperatures_c],
            soc_pct=None if status.soc_pct is None else float(status.soc_pct),
            cell_voltages_v=status.cell_voltages_v,
            reported_cells=status.cell_count,
        )


def create(url: SourceUrl, settings: SourceSettings, port: SerialLike | None = None) -> JkSource:
    return JkSource(**serial_source_kwargs("jk", url, settings, DEFAULT_BAUD), port=port)
