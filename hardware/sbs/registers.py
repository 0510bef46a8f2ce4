"""SBS 1.1 registers and their decoding: pure functions from raw 16-bit words to values with units.

Register set and scaling as in the Smart Battery Data Specification 1.1 and Linux
drivers/power/supply/sbs-battery.c; cell voltages at 0x3C..0x3F (cell 4..1) are TI bq40z50
extensions. Words travel little-endian on the bus; smbus2's ``read_word_data`` already returns them as
integers. Current is signed, positive = charging. Capacities are mAh, or 10 mWh when BatteryMode
(0x03) bit 15 (CAPACITY_MODE) is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hardware.errors import ChecksumError, DecodeError, FramingError
from hardware.sbs.pec import read_word_pec

BATTERY_MODE = 0x03
TEMPERATURE = 0x08
VOLTAGE = 0x09
CURRENT = 0x0A
AVERAGE_CURRENT = 0x0B
RELATIVE_STATE_OF_CHARGE = 0x0D
REMAINING_CAPACITY = 0x0F
FULL_CHARGE_CAPACITY = 0x10
BATTERY_STATUS = 0x16
CYCLE_COUNT = 0x17
DESIGN_CAPACITY = 0x18
SPECIFICATION_INFO = 0x1A
CELL_VOLTAGE_4 = 0x3C
CELL_VOLTAGE_3 = 0x3D
CELL_VOLTAGE_2 = 0x3E
CELL_VOLTAGE_1 = 0x3F

#: cell n (1-based) -> register
CELL_REGISTERS = {1: CELL_VOLTAGE_1, 2: CELL_VOLTAGE_2, 3: CELL_VOLTAGE_3, 4: CELL_VOLTAGE_4}
MAX_CELLS = 4

CAPACITY_MODE_BIT = 0x8000
KELVIN_OFFSET_C = 273.15

NAMES = {
    BATTERY_MODE: "BatteryMode",
    TEMPERATURE: "Temperature",
    VOLTAGE: "Voltage",
    CURRENT: "Current",
    AVERAGE_CURRENT: "AverageCurrent",
    RELATIVE_STATE_OF_CHARGE: "RelativeStateOfCharge",
    REMAINING_CAPACITY: "RemainingCapacity",
    FULL_CHARGE_CAPACITY: "FullChargeCapacity",
    BATTERY_STATUS: "BatteryStatus",
    CYCLE_COUNT: "CycleCount",
    DESIGN_CAPACITY: "DesignCapacity",
    SPECIFICATION_INFO: "SpecificationInfo",
    CELL_VOLTAGE_4: "CellVoltage4",
    CELL_VOLTAGE_3: "CellVoltage3",
    CELL_VOLTAGE_2: "CellVoltage2",
    CELL_VOLTAGE_1: "CellVoltage1",
}


def _check_word(register: int, word: int) -> None:
    if not 0 <= word <= 0xFFFF:
        raise DecodeError(f"sbs register 0x{register:02x}: {word} is not a 16-bit word")


def _signed(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def decode_register(register: int, word: int, capacity_mode_energy: bool = False) -> dict[str, float | int]:
    """One register's value(s), keys with units. Unknown registers raise DecodeError."""
    _check_word(register, word)
    if register == BATTERY_MODE:
        return {"battery_mode_bitmask": word, "capacity_mode_energy": int(bool(word & CAPACITY_MODE_BIT))}
    if register == TEMPERATURE:
        return {"temperature_c": round(word * 0.1 - KELVIN_OFFSET_C, 2)}
    if register == VOLTAGE:
        return {"voltage_v": word / 1000}
    if register == CURRENT:
        return {"current_a": _signed(word) / 1000}
    if register == AVERAGE_CURRENT:
        return {"average_current_a": _signed(word) / 1000}
    if register == RELATIVE_STATE_OF_CHARGE:
        return {"soc_pct": word}
    if register in (REMAINING_CAPACITY, FULL_CHARGE_CAPACITY, DESIGN_CAPACITY):
        prefix = {REMAINING_CAPACITY: "remaining", FULL_CHARGE_CAPACITY: "full_charge", DESIGN_CAPACITY: "design"}
        if capacity_mode_energy:
            return {f"{prefix[register]}_energy_wh": word * 10 / 1000}
        return {f"{prefix[register]}_capacity_ah": word / 1000}
    if register == BATTERY_STATUS:
        return {"battery_status_bitmask": word}
    if register == CYCLE_COUNT:
        return {"cycles": word}
    if register == SPECIFICATION_INFO:
        return {"specification_info_raw": word, "sbs_revision": word & 0x0F, "sbs_version": (word >> 4) & 0x0F}
    if register in (CELL_VOLTAGE_1, CELL_VOLTAGE_2, CELL_VOLTAGE_3, CELL_VOLTAGE_4):
        cell = CELL_VOLTAGE_1 - register + 1
        return {f"cell{cell}_voltage_v": word / 1000}
    raise DecodeError(f"sbs: register 0x{register:02x} is not decoded")


@dataclass(frozen=True, slots=True)
class SbsReading:
    voltage_v: float
    current_a: float
    temperature_c: float
    soc_pct: int
    cell_voltages_v: tuple[float, ...] | None


def decode_reading(words: Mapping[int, int], cells: int = 0) -> SbsReading:
    """The values a Sample needs from raw register words (pure; raises DecodeError if one is missing)."""
    missing = [NAMES[r] for r in (VOLTAGE, CURRENT, TEMPERATURE, RELATIVE_STATE_OF_CHARGE) if r not in words]
    if missing:
        raise DecodeError(f"sbs: missing register(s) {', '.join(missing)}")
    if not 0 <= cells <= MAX_CELLS:
        raise DecodeError(f"sbs: {cells} cells; cell voltages exist for 1..{MAX_CELLS}")
    for register, word in words.items():
        _check_word(register, word)
    cell_values: tuple[float, ...] | None = None
    if cells:
        registers = [CELL_REGISTERS[n] for n in range(1, cells + 1)]
        absent = [NAMES[r] for r in registers if r not in words]
        if absent:
            raise DecodeError(f"sbs: missing register(s) {', '.join(absent)}")
        cell_values = tuple(words[r] / 1000 for r in registers)
    return SbsReading(
        voltage_v=words[VOLTAGE] / 1000,
        current_a=_signed(words[CURRENT]) / 1000,
        temperature_c=round(words[TEMPERATURE] * 0.1 - KELVIN_OFFSET_C, 2),
        soc_pct=words[RELATIVE_STATE_OF_CHARGE],
        cell_voltages_v=cell_values,
    )


def decode_transaction(data: bytes, address: int = 0x0B, capacity_mode_energy: bool = False) -> dict[str, object]:
    """Decode one read-word transaction as seen on the bus: ``<command> <low> <high> [<PEC>]``."""
    if len(data) not in (3, 4):
        raise FramingError(f"sbs: a read-word transaction is 3 bytes (+1 PEC), got {len(data)}")
    command, low, high = data[0], data[1], data[2]
    if len(data) == 4:
        expected = read_word_pec(address, command, low, high)
        if data[3] != expected:
            raise ChecksumError(f"sbs: PEC 0x{data[3]:02x}, computed 0x{expected:02x}")
    word = low | (high << 8)
    values: dict[str, object] = {"register": f"0x{command:02x}", "name": NAMES.get(command, "unknown")}
    values.update(decode_register(command, word, capacity_mode_energy))
    return values
