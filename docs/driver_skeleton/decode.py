"""EXAMPLE payload decoding: pure functions from a frame to values with units (no I/O, no clock).

Register 0x10, pack status (offsets into the data; big-endian; a template — write your BMS' table here,
with its source: a datasheet, a vendor document, or the open-source driver the layout was taken from)::

    0  u16 pack voltage, 10 mV
    2  i16 current, 10 mA (+ = charging, the Sample convention; negate here if your BMS counts the other way)
    4  i16 temperature, 0.1 °C
    6  u8  state of charge, %
    7  u8  cell count n
    8  n × u16 cell voltages, 1 mV
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from docs.driver_skeleton.framing import REG_STATUS, parse_frame
from hardware.errors import DecodeError

_HEADER = struct.Struct(">HhhBB")  # offsets 0..7, as in the table above


@dataclass(frozen=True, slots=True)
class ExampleStatus:
    pack_voltage_v: float  # offset 0, u16 × 0.01 V
    current_a: float  # offset 2, i16 × 0.01 A, + = charging
    temperature_c: float  # offset 4, i16 × 0.1 °C
    soc_pct: int  # offset 6, u8
    cell_voltages_v: tuple[float, ...]  # offset 8, n × u16 × 0.001 V (n at offset 7)


def decode_status(data: bytes) -> ExampleStatus:
    """Register 0x10's data → values. A payload that does not fit the layout is a DecodeError."""
    if len(data) < _HEADER.size:
        raise DecodeError(f"example: status payload is {len(data)} bytes, needs at least {_HEADER.size}")
    voltage_10mv, current_10ma, temp_dc, soc, cells = _HEADER.unpack_from(data)
    if len(data) != _HEADER.size + 2 * cells:
        raise DecodeError(f"example: {cells} cells need {_HEADER.size + 2 * cells} bytes, got {len(data)}")
    if soc > 100:
        raise DecodeError(f"example: SOC {soc} % > 100")
    cell_mv = struct.unpack_from(f">{cells}H", data, _HEADER.size)
    return ExampleStatus(
        pack_voltage_v=voltage_10mv / 100,
        current_a=current_10ma / 100,
        temperature_c=temp_dc / 10,
        soc_pct=soc,
        cell_voltages_v=tuple(mv / 1000 for mv in cell_mv),
    )


def decode_frame(frame: bytes) -> ExampleStatus:
    """One complete reply frame → values (framing checked first)."""
    parsed = parse_frame(frame)
    if parsed.register != REG_STATUS:
        raise DecodeError(f"example: reply for register 0x{parsed.register:02x}, expected 0x{REG_STATUS:02x}")
    return decode_status(parsed.data)
