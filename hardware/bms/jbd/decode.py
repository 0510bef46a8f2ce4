"""JBD payload decoding: pure functions from a response payload (or frame) to values with units.

Layouts follow syssi/esphome-jbd-bms (components/jbd_bms/jbd_bms.cpp) and the JBD "Smart BMS" UART
protocol notes. Register 0x03 basic info::

    0  u16 pack voltage, 10 mV            12 u16 balance bits, cells 1-16
    2  i16 current, 10 mA (+ = charging)  14 u16 balance bits, cells 17-32
    4  u16 remaining capacity, 10 mAh     16 u16 protection (fault) bits
    6  u16 nominal capacity, 10 mAh       18 u8  software version (0x80 = 8.0)
    8  u16 cycles                         19 u8  SOC, %
    10 u16 date: (y-2000)<<9 | m<<5 | d   20 u8  FET bits (bit0 charge, bit1 discharge)
                                          21 u8  cells   22 u8 NTCs   23.. u16 NTC temps, 0.1 K

Newer firmware appends more fields after the NTC temperatures; they are ignored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from hardware.bms.jbd.framing import (
    REG_BASIC_INFO,
    REG_CELL_VOLTAGES,
    REG_ERROR_COUNTS,
    REG_HARDWARE_NAME,
    parse_request,
    parse_response,
)
from hardware.errors import DecodeError

KELVIN_OFFSET_DK = 2731  # 273.1 K in 0.1 K


class JbdErrorReply(DecodeError):
    """The BMS answered with a non-zero status byte (it refused or did not understand the request)."""

    def __init__(self, register: int, status: int) -> None:
        super().__init__(f"jbd: BMS answered register 0x{register:02x} with error status 0x{status:02x}")
        self.register = register
        self.status = status


@dataclass(frozen=True, slots=True)
class JbdBasicInfo:
    pack_voltage_v: float
    current_a: float
    capacity_remaining_ah: float
    nominal_capacity_ah: float
    cycles: int
    production_date: str | None  # ISO date, None when the field is not a valid date
    production_date_raw: int
    balancer_status_bitmask: int  # bit n = cell n+1 balancing (cells 1..32)
    errors_bitmask: int  # protection status bits
    software_version: float  # ESPHome reading: high nibble . low nibble (0x80 -> 8.0)
    software_version_raw: int
    soc_pct: int
    fet_bitmask: int
    charge_fet_on: bool
    discharge_fet_on: bool
    cell_count: int
    temperature_sensor_count: int
    temperatures_c: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class JbdCellVoltages:
    cell_voltages_v: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class JbdHardwareName:
    device_model: str


@dataclass(frozen=True, slots=True)
class JbdErrorCounts:
    short_circuit_count: int
    charge_overcurrent_count: int
    discharge_overcurrent_count: int
    cell_overvoltage_count: int
    cell_undervoltage_count: int
    charge_overtemperature_count: int
    charge_undertemperature_count: int
    discharge_overtemperature_count: int
    discharge_undertemperature_count: int
    battery_overvoltage_count: int
    battery_undervoltage_count: int


@dataclass(frozen=True, slots=True)
class JbdRegisterData:
    """A valid reply for a register this module does not interpret (EEPROM settings ...)."""

    register: int
    data_hex: str


@dataclass(frozen=True, slots=True)
class JbdCommand:
    """A decoded request (what the host asked)."""

    write: bool
    register: int
    data_hex: str
    command: str


JbdValues = JbdBasicInfo | JbdCellVoltages | JbdHardwareName | JbdErrorCounts | JbdRegisterData


def _u16(data: bytes, offset: int) -> int:
    return (data[offset] << 8) | data[offset + 1]


def _i16(data: bytes, offset: int) -> int:
    value = (data[offset] << 8) | data[offset + 1]
    return value - 0x10000 if value & 0x8000 else value


def _date(raw: int) -> str | None:
    try:
        return dt.date(2000 + (raw >> 9), (raw >> 5) & 0x0F, raw & 0x1F).isoformat()
    except ValueError:
        return None


def decode_basic_info(data: bytes) -> JbdBasicInfo:
    if len(data) < 23:
        raise DecodeError(f"jbd basic info: {len(data)} bytes, need at least 23")
    ntc = data[22]
    if len(data) < 23 + 2 * ntc:
        raise DecodeError(f"jbd basic info: {ntc} NTCs announced but only {len(data) - 23} bytes follow")
    temps = tuple(round((_u16(data, 23 + 2 * i) - KELVIN_OFFSET_DK) * 0.1, 1) for i in range(ntc))
    version = data[18]
    fet = data[20]
    date_raw = _u16(data, 10)
    return JbdBasicInfo(
        pack_voltage_v=round(_u16(data, 0) * 0.01, 2),
        current_a=round(_i16(data, 2) * 0.01, 2),
        capacity_remaining_ah=round(_u16(data, 4) * 0.01, 2),
        nominal_capacity_ah=round(_u16(data, 6) * 0.01, 2),
        cycles=_u16(data, 8),
        production_date=_date(date_raw),
        production_date_raw=date_raw,
        balancer_status_bitmask=_u16(data, 12) | (_u16(data, 14) << 16),
        errors_bitmask=_u16(data, 16),
        software_version=(version >> 4) + (version & 0x0F) / 10,
        software_version_raw=version,
        soc_pct=data[19],
        fet_bitmask=fet,
        charge_fet_on=bool(fet & 0x01),
        discharge_fet_on=bool(fet & 0x02),
        cell_count=data[21],
        temperature_sensor_count=ntc,
        temperatures_c=temps,
    )


def decode_cell_voltages(data: bytes) -> JbdCellVoltages:
    if len(data) % 2:
        raise DecodeError(f"jbd cell voltages: odd payload length {len(data)}")
    return JbdCellVoltages(tuple(_u16(data, i) / 1000 for i in range(0, len(data), 2)))


def decode_hardware_name(data: bytes) -> JbdHardwareName:
    return JbdHardwareName(data.decode("ascii", errors="replace").rstrip("\x00 "))


_ERROR_COUNT_FIELDS = 11


def decode_error_counts(data: bytes) -> JbdErrorCounts:
    if len(data) < 2 * _ERROR_COUNT_FIELDS:
        raise DecodeError(f"jbd error counts: {len(data)} bytes, need {2 * _ERROR_COUNT_FIELDS}")
    return JbdErrorCounts(*(_u16(data, 2 * i) for i in range(_ERROR_COUNT_FIELDS)))


_DECODERS: dict[int, Callable[[bytes], JbdValues]] = {
    REG_BASIC_INFO: decode_basic_info,
    REG_CELL_VOLTAGES: decode_cell_voltages,
    REG_HARDWARE_NAME: decode_hardware_name,
    REG_ERROR_COUNTS: decode_error_counts,
}


def decode_payload(register: int, data: bytes) -> JbdValues:
    """Decode the data bytes of a reply for ``register`` (payload-level: no header, no checksum)."""
    decoder = _DECODERS.get(register)
    if decoder is None:
        return JbdRegisterData(register=register, data_hex=data.hex())
    return decoder(data)


def decode_response(frame: bytes) -> JbdValues:
    """Validate one complete response frame and decode it. Raises ProtocolError subclasses only."""
    response = parse_response(frame)
    if response.status != 0:
        raise JbdErrorReply(response.register, response.status)
    return decode_payload(response.register, response.data)


_MOSFET_CONTROL = 0xE1
_FACTORY = 0x00
_EXIT_FACTORY = 0x01


def decode_request(frame: bytes) -> JbdCommand:
    """Validate and describe one request frame (reads, MOSFET control, factory mode)."""
    request = parse_request(frame)
    data = request.data
    if not request.write:
        command = f"read register 0x{request.register:02x}"
    elif request.register == _MOSFET_CONTROL and len(data) == 2:
        # data bit0 set = charging switched off, bit1 set = discharging switched off
        charge = "off" if data[1] & 0x01 else "on"
        discharge = "off" if data[1] & 0x02 else "on"
        command = f"mosfet control: charging {charge}, discharging {discharge}"
    elif request.register == _FACTORY and data == b"\x56\x78":
        command = "enter factory mode"
    elif request.register == _EXIT_FACTORY and data == b"\x00\x00":
        command = "exit factory mode without writing"
    elif request.register == _EXIT_FACTORY and data == b"\x28\x28":
        command = "exit factory mode and write"
    else:
        command = f"write register 0x{request.register:02x}"
    return JbdCommand(write=request.write, register=request.register, data_hex=data.hex(), command=command)


__all__ = [
    "JbdBasicInfo",
    "JbdCellVoltages",
    "JbdCommand",
    "JbdErrorCounts",
    "JbdErrorReply",
    "JbdHardwareName",
    "JbdRegisterData",
    "JbdValues",
    "decode_basic_info",
    "decode_cell_voltages",
    "decode_error_counts",
    "decode_hardware_name",
    "decode_payload",
    "decode_request",
    "decode_response",
]
