"""Daly payload decoding: pure functions from the 8 data bytes (or a whole frame) to values.

Layouts follow the Daly UART/RS485 protocol document as implemented by esphome daly_bms, mpp-solar and
dreadnought/python-daly-bms::

    0x90  u16 total V (0.1 V) | u16 acquisition V (0.1 V) | u16 current (30000 offset, 0.1 A) | u16 SOC 0.1 %
    0x91  u16 max cell mV | u8 cell no | u16 min cell mV | u8 cell no
    0x92  u8 max temp (+40) | u8 sensor no | u8 min temp (+40) | u8 sensor no
    0x93  u8 state (0 idle, 1 charging, 2 discharging) | u8 charge MOS | u8 discharge MOS | u8 BMS life
          | u32 remaining capacity mAh
    0x94  u8 cells | u8 temp sensors | u8 charger | u8 load | u8 DIO bits | u16 cycles | u8 reserved
    0x95  u8 frame no (1-based) | 3 x u16 cell mV | reserved     (several frames, 3 cells each)
    0x96  u8 frame no (1-based) | 7 x u8 temp (+40)             (several frames, 7 sensors each)
    0x97  48 balance bits (bit n = cell n+1)
    0x98  64 fault bits

Current sign: firmware differs (see hardware/README.md). ``current_sign`` multiplies
``(raw - 30000) * 0.1``; +1 (the default) takes a raw value above 30000 as charging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from hardware.bms.daly.framing import parse_frame
from hardware.errors import DecodeError

CURRENT_OFFSET = 30000
TEMP_OFFSET_C = 40
CELLS_PER_FRAME = 3
TEMPS_PER_FRAME = 7

ID_PACK = 0x90
ID_CELL_EXTREMES = 0x91
ID_TEMP_EXTREMES = 0x92
ID_MOSFET = 0x93
ID_STATUS = 0x94
ID_CELL_VOLTAGES = 0x95
ID_TEMPERATURES = 0x96
ID_BALANCE = 0x97
ID_FAULTS = 0x98

_STATES = {0: "stationary", 1: "charging", 2: "discharging"}


@dataclass(frozen=True, slots=True)
class DalyPackStatus:
    pack_voltage_v: float
    acquisition_voltage_v: float
    current_a: float
    soc_pct: float


@dataclass(frozen=True, slots=True)
class DalyCellExtremes:
    max_cell_voltage_v: float
    max_cell_number: int
    min_cell_voltage_v: float
    min_cell_number: int


@dataclass(frozen=True, slots=True)
class DalyTemperatureExtremes:
    max_temperature_c: int
    max_temperature_sensor: int
    min_temperature_c: int
    min_temperature_sensor: int


@dataclass(frozen=True, slots=True)
class DalyMosfetStatus:
    mode: str
    charging_mosfet: bool
    discharging_mosfet: bool
    bms_life_cycles: int
    remaining_capacity_ah: float


@dataclass(frozen=True, slots=True)
class DalyStatusInfo:
    cell_count: int
    temperature_sensor_count: int
    charger_connected: bool
    load_connected: bool
    dio_bitmask: int
    cycles: int


@dataclass(frozen=True, slots=True)
class DalyCellVoltageFrame:
    frame_number: int
    cell_voltages_v: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class DalyTemperatureFrame:
    frame_number: int
    temperatures_c: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DalyBalanceStatus:
    balancing_bitmask: int  # 48 bits as sent (bytes 0..5, big-endian); cell order of the bits varies


@dataclass(frozen=True, slots=True)
class DalyFaults:
    fault_bitmask: int
    fault_count: int


@dataclass(frozen=True, slots=True)
class DalyUnknown:
    data_id: int
    data_hex: str


DalyValues = (
    DalyPackStatus
    | DalyCellExtremes
    | DalyTemperatureExtremes
    | DalyMosfetStatus
    | DalyStatusInfo
    | DalyCellVoltageFrame
    | DalyTemperatureFrame
    | DalyBalanceStatus
    | DalyFaults
    | DalyUnknown
)


def _u16(data: bytes, offset: int) -> int:
    return (data[offset] << 8) | data[offset + 1]


def _need8(data: bytes, what: str) -> None:
    if len(data) != 8:
        raise DecodeError(f"daly {what}: payload is {len(data)} bytes, expected 8")


def decode_pack_status(data: bytes, current_sign: int = 1) -> DalyPackStatus:
    _need8(data, "0x90")
    current = (_u16(data, 4) - CURRENT_OFFSET) * 0.1 * current_sign
    return DalyPackStatus(
        pack_voltage_v=round(_u16(data, 0) * 0.1, 1),
        acquisition_voltage_v=round(_u16(data, 2) * 0.1, 1),
        current_a=round(current, 1) + 0.0,
        soc_pct=round(_u16(data, 6) * 0.1, 1),
    )


def decode_cell_extremes(data: bytes) -> DalyCellExtremes:
    _need8(data, "0x91")
    return DalyCellExtremes(
        max_cell_voltage_v=_u16(data, 0) / 1000,
        max_cell_number=data[2],
        min_cell_voltage_v=_u16(data, 3) / 1000,
        min_cell_number=data[5],
    )


def decode_temperature_extremes(data: bytes) -> DalyTemperatureExtremes:
    _need8(data, "0x92")
    return DalyTemperatureExtremes(
        max_temperature_c=data[0] - TEMP_OFFSET_C,
        max_temperature_sensor=data[1],
        min_temperature_c=data[2] - TEMP_OFFSET_C,
        min_temperature_sensor=data[3],
    )


def decode_mosfet_status(data: bytes) -> DalyMosfetStatus:
    _need8(data, "0x93")
    return DalyMosfetStatus(
        mode=_STATES.get(data[0], f"unknown ({data[0]})"),
        charging_mosfet=bool(data[1]),
        discharging_mosfet=bool(data[2]),
        bms_life_cycles=data[3],
        remaining_capacity_ah=int.from_bytes(data[4:8], "big") / 1000,
    )


def decode_status_info(data: bytes) -> DalyStatusInfo:
    _need8(data, "0x94")
    return DalyStatusInfo(
        cell_count=data[0],
        temperature_sensor_count=data[1],
        charger_connected=bool(data[2]),
        load_connected=bool(data[3]),
        dio_bitmask=data[4],
        cycles=_u16(data, 5),
    )


def decode_cell_voltage_frame(data: bytes) -> DalyCellVoltageFrame:
    _need8(data, "0x95")
    if data[0] == 0:
        raise DecodeError("daly 0x95: frame number 0 (frames count from 1)")
    return DalyCellVoltageFrame(
        frame_number=data[0],
        cell_voltages_v=(_u16(data, 1) / 1000, _u16(data, 3) / 1000, _u16(data, 5) / 1000),
    )


def decode_temperature_frame(data: bytes) -> DalyTemperatureFrame:
    _need8(data, "0x96")
    if data[0] == 0:
        raise DecodeError("daly 0x96: frame number 0 (frames count from 1)")
    return DalyTemperatureFrame(frame_number=data[0], temperatures_c=tuple(b - TEMP_OFFSET_C for b in data[1:8]))


def decode_balance_status(data: bytes) -> DalyBalanceStatus:
    _need8(data, "0x97")
    return DalyBalanceStatus(balancing_bitmask=int.from_bytes(data[0:6], "big"))


def decode_faults(data: bytes) -> DalyFaults:
    _need8(data, "0x98")
    bits = int.from_bytes(data, "big")
    return DalyFaults(fault_bitmask=bits, fault_count=bin(bits).count("1"))


_DECODERS: dict[int, Callable[[bytes], DalyValues]] = {
    ID_CELL_EXTREMES: decode_cell_extremes,
    ID_TEMP_EXTREMES: decode_temperature_extremes,
    ID_MOSFET: decode_mosfet_status,
    ID_STATUS: decode_status_info,
    ID_CELL_VOLTAGES: decode_cell_voltage_frame,
    ID_TEMPERATURES: decode_temperature_frame,
    ID_BALANCE: decode_balance_status,
    ID_FAULTS: decode_faults,
}


def decode_payload(data_id: int, data: bytes, current_sign: int = 1) -> DalyValues:
    """Decode the 8 data bytes of a reply with ``data_id`` (payload-level: no header, no checksum)."""
    if data_id == ID_PACK:
        return decode_pack_status(data, current_sign)
    decoder = _DECODERS.get(data_id)
    if decoder is None:
        _need8(data, f"0x{data_id:02x}")
        return DalyUnknown(data_id=data_id, data_hex=data.hex())
    return decoder(data)


def decode_frame(frame: bytes, current_sign: int = 1) -> DalyValues:
    """Validate exactly one 13-byte frame and decode it. Raises ProtocolError subclasses only."""
    parsed = parse_frame(frame)
    return decode_payload(parsed.data_id, parsed.data, current_sign)


def merge_cell_voltages(frames: Iterable[DalyCellVoltageFrame], cell_count: int | None = None) -> tuple[float, ...]:
    """Cell voltages in cell order from several 0x95 frames (each frame number once, no gaps)."""
    by_number = _by_number(frames, "0x95")
    if cell_count is None:
        cell_count = CELLS_PER_FRAME * len(by_number)
    needed = -(-cell_count // CELLS_PER_FRAME)
    missing = [n for n in range(1, needed + 1) if n not in by_number]
    if missing:
        raise DecodeError(f"daly 0x95: missing frame(s) {missing} for {cell_count} cells")
    cells = [v for n in range(1, needed + 1) for v in by_number[n].cell_voltages_v]
    return tuple(cells[:cell_count])


def missing_frames(frame_numbers: Iterable[int], per_frame: int, count: int | None) -> list[int]:
    """Frame numbers a complete multi-frame reply would still need: frames 1..ceil(count / per_frame) when
    the cell/sensor ``count`` is known, else 1..the highest number seen."""
    seen = set(frame_numbers)
    needed = -(-count // per_frame) if count is not None else max(seen, default=0)
    return [n for n in range(1, needed + 1) if n not in seen]


def frame_cells(frame: DalyCellVoltageFrame, cell_count: int | None = None) -> dict[int, float]:
    """What one 0x95 frame carries: cell number (1-based) -> voltage. Frame n carries cells 3n-2..3n; cells
    past a known ``cell_count`` are padding and left out."""
    first = (frame.frame_number - 1) * CELLS_PER_FRAME + 1
    return {first + i: v for i, v in enumerate(frame.cell_voltages_v) if cell_count is None or first + i <= cell_count}


def frame_sensors(frame: DalyTemperatureFrame, sensor_count: int | None = None) -> dict[int, int]:
    """What one 0x96 frame carries: sensor number (1-based) -> temperature; frame n carries 7n-6..7n."""
    first = (frame.frame_number - 1) * TEMPS_PER_FRAME + 1
    return {
        first + i: t for i, t in enumerate(frame.temperatures_c) if sensor_count is None or first + i <= sensor_count
    }


def merge_temperatures(frames: Iterable[DalyTemperatureFrame], sensor_count: int | None = None) -> tuple[int, ...]:
    by_number = _by_number(frames, "0x96")
    if sensor_count is None:
        sensor_count = TEMPS_PER_FRAME * len(by_number)
    needed = -(-sensor_count // TEMPS_PER_FRAME)
    missing = [n for n in range(1, needed + 1) if n not in by_number]
    if missing:
        raise DecodeError(f"daly 0x96: missing frame(s) {missing} for {sensor_count} sensors")
    temps = [t for n in range(1, needed + 1) for t in by_number[n].temperatures_c]
    return tuple(temps[:sensor_count])


_F = TypeVar("_F", DalyCellVoltageFrame, DalyTemperatureFrame)


def _by_number(frames: Iterable[_F], what: str) -> dict[int, _F]:
    by_number: dict[int, _F] = {}
    for frame in frames:
        if frame.frame_number in by_number and by_number[frame.frame_number] != frame:
            raise DecodeError(f"daly {what}: frame {frame.frame_number} received twice with different data")
        by_number[frame.frame_number] = frame
    return by_number
