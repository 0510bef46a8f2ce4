"""Daly source: ``daly:/dev/ttyUSB0?address=0x40[&current_sign=1&baud=9600&cells=16 ...]``.

``address`` is the host address the requests carry: 0x40 for the RS485 port (default), 0x80 for the
UART/Bluetooth port. ``current_sign`` (1 or -1, default 1): Daly firmware disagree on the sign of the
0x90 current field; with 1, a raw value above 30000 is charging (Sample: positive = charging). Check
once against a known charge and set -1 if your BMS reads the other way (see hardware/README.md).

One poll = 0x90 (voltage, current, SOC), 0x94 (cell and sensor counts), 0x95 (cell voltages, several
frames) and 0x96 (temperatures, several frames). All values come from this poll's frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hardware.bms.daly.decode import (
    CELLS_PER_FRAME,
    ID_CELL_VOLTAGES,
    ID_PACK,
    ID_STATUS,
    ID_TEMPERATURES,
    TEMPS_PER_FRAME,
    DalyCellVoltageFrame,
    DalyTemperatureFrame,
    decode_cell_voltage_frame,
    decode_pack_status,
    decode_status_info,
    decode_temperature_frame,
    merge_cell_voltages,
    merge_temperatures,
)
from hardware.bms.daly.framing import HOST_RS485, HOST_UART, SPEC, build_request, parse_frame
from hardware.bms.options import DriverOptions
from hardware.bms.polling import build_sample
from hardware.bms.serial_source import SerialBmsSource, serial_source_kwargs
from hardware.errors import SourceConfigError
from hardware.transports.serial_port import SerialLike
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_BAUD = 9600
DEFAULT_CURRENT_SIGN = 1

_T = TypeVar("_T", DalyCellVoltageFrame, DalyTemperatureFrame)


def _is_id(data_id: int) -> Callable[[bytes], bool]:
    return lambda frame: frame[2] == data_id


class DalySource(SerialBmsSource):
    def __init__(
        self,
        source_id: str,
        *,
        path: str | None,
        options: DriverOptions,
        host_address: int = HOST_RS485,
        current_sign: int = DEFAULT_CURRENT_SIGN,
        baudrate: int = DEFAULT_BAUD,
        port: SerialLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id, SPEC, path=path, baudrate=baudrate, options=options, port=port, clock=clock)
        if current_sign not in (1, -1):
            raise SourceConfigError("daly current_sign must be 1 or -1")
        self.host_address = host_address
        self.current_sign = current_sign
        self._requests = {
            data_id: build_request(data_id, host_address)
            for data_id in (ID_PACK, ID_STATUS, ID_CELL_VOLTAGES, ID_TEMPERATURES)
        }

    def _one(self, data_id: int) -> bytes:
        return parse_frame(self.link.request(self._requests[data_id], _is_id(data_id))).data

    def _several(self, data_id: int, count: int, decoder: Callable[[bytes], _T]) -> list[_T]:
        """Request ``data_id`` and collect frames numbered 1..count (extra frames are ignored)."""
        link = self.link
        deadline = link.send(self._requests[data_id])
        accept = _is_id(data_id)
        frames: dict[int, _T] = {}
        while len(frames) < count:
            decoded = decoder(parse_frame(link.receive(deadline, accept)).data)
            if decoded.frame_number <= count:
                frames[decoded.frame_number] = decoded
        return list(frames.values())

    def _read(self) -> Sample:
        pack = decode_pack_status(self._one(ID_PACK), self.current_sign)
        status = decode_status_info(self._one(ID_STATUS))
        cell_frames = self._several(
            ID_CELL_VOLTAGES, -(-status.cell_count // CELLS_PER_FRAME), decode_cell_voltage_frame
        )
        cells = merge_cell_voltages(cell_frames, status.cell_count)
        temps: tuple[int, ...] = ()
        if status.temperature_sensor_count:
            temp_frames = self._several(
                ID_TEMPERATURES,
                -(-status.temperature_sensor_count // TEMPS_PER_FRAME),
                decode_temperature_frame,
            )
            temps = merge_temperatures(temp_frames, status.temperature_sensor_count)
        return build_sample(
            self,
            voltage_v=pack.pack_voltage_v,
            current_a=pack.current_a,
            temperatures_c=[float(t) for t in temps],
            soc_pct=pack.soc_pct,
            cell_voltages_v=cells,
            reported_cells=status.cell_count,
        )


def create(url: SourceUrl, settings: SourceSettings, port: SerialLike | None = None) -> DalySource:
    kwargs = serial_source_kwargs("daly", url, settings, DEFAULT_BAUD, extra_options={"address", "current_sign"})
    address = url.int_option("address", HOST_RS485)
    if address not in (HOST_RS485, HOST_UART):
        raise SourceConfigError(f"source URL {url.raw!r}: address must be 0x40 (RS485) or 0x80 (UART)")
    current_sign = url.int_option("current_sign", DEFAULT_CURRENT_SIGN)
    if current_sign not in (1, -1):
        raise SourceConfigError(f"source URL {url.raw!r}: current_sign must be 1 or -1")
    return DalySource(**kwargs, host_address=address, current_sign=current_sign, port=port)
