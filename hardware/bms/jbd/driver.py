"""JBD source: ``jbd:/dev/ttyUSB0[?baud=9600&cells=4&timeout=1 ...]``.

One poll = register 0x03 (basic info) + register 0x04 (cell voltages). JBD current is int16 in 10 mA,
positive = charging, which is already the Sample convention.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hardware.bms.jbd.decode import JbdBasicInfo, JbdCellVoltages, decode_response
from hardware.bms.jbd.framing import REG_BASIC_INFO, REG_CELL_VOLTAGES, RESPONSE_SPEC, build_request
from hardware.bms.options import DriverOptions
from hardware.bms.polling import build_sample
from hardware.bms.serial_source import SerialBmsSource, serial_source_kwargs
from hardware.errors import DecodeError
from hardware.transports.serial_port import SerialLike
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_BAUD = 9600

_REQUEST_BASIC = build_request(REG_BASIC_INFO)
_REQUEST_CELLS = build_request(REG_CELL_VOLTAGES)


def _is_register(register: int) -> Callable[[bytes], bool]:
    return lambda frame: frame[1] == register


_BASIC = _is_register(REG_BASIC_INFO)
_CELLS = _is_register(REG_CELL_VOLTAGES)


class JbdSource(SerialBmsSource):
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
        super().__init__(
            source_id, RESPONSE_SPEC, path=path, baudrate=baudrate, options=options, port=port, clock=clock
        )

    def _read(self) -> Sample:
        link = self.link
        basic = decode_response(link.request(_REQUEST_BASIC, _BASIC))
        cells = decode_response(link.request(_REQUEST_CELLS, _CELLS))
        if not isinstance(basic, JbdBasicInfo) or not isinstance(cells, JbdCellVoltages):  # pragma: no cover
            raise DecodeError("jbd: reply for the wrong register")
        if len(cells.cell_voltages_v) != basic.cell_count:
            raise DecodeError(
                f"jbd: basic info reports {basic.cell_count} cells, register 0x04 has {len(cells.cell_voltages_v)}"
            )
        return build_sample(
            self,
            voltage_v=basic.pack_voltage_v,
            current_a=basic.current_a,
            temperatures_c=basic.temperatures_c,
            soc_pct=float(basic.soc_pct),
            cell_voltages_v=cells.cell_voltages_v,
            reported_cells=basic.cell_count,
        )


def create(url: SourceUrl, settings: SourceSettings, port: SerialLike | None = None) -> JbdSource:
    return JbdSource(**serial_source_kwargs("jbd", url, settings, DEFAULT_BAUD), port=port)
