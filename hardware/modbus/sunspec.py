"""SunSpec discovery and the battery base model 802, as pure functions of register values.

Discovery: the marker "SunS" (0x5375 0x6E53) sits at base register 40000, 0 or 50000; model blocks
``[ID, L, L registers ...]`` follow until ID 0xFFFF. A point's value is ``raw * 10**SF`` where SF is a
signed scale-factor register (``sunssf``) of the same block. "Not implemented" markers: 0xFFFF for
uint16/enum16, 0x8000 for int16/sunssf, 0xFFFFFFFF for uint32/bitfield32; such points decode to None.

Model 802 point layout: sunspec/models json/model_802.json (repository sunspec/models, commit
0ab0d1d8c728, read via the search tool's code corpus). Offsets are from the ID register; 64 registers
in all (ID, L = 62, 50 points, 12 scale factors at the end).

The model's text does not fix the sign of ``A`` ("Total DC current flowing to/from the battery bank");
the driver's ``current_sign`` option maps it to the Sample convention (positive = charging).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hardware.errors import DecodeError
from hardware.modbus.errors import ModbusExceptionError

MARKER = (0x5375, 0x6E53)
BASES = (40000, 0, 50000)
END_ID = 0xFFFF
MODEL_COMMON = 1
MODEL_BATTERY = 802
MODEL_802_LENGTH = 62
MODEL_802_SIZE = MODEL_802_LENGTH + 2

NI_U16 = 0xFFFF
NI_I16 = 0x8000
NI_U32 = 0xFFFFFFFF

# offsets from the ID register (model_802.json, in order)
OFF = {
    "ID": 0, "L": 1, "AHRtg": 2, "WHRtg": 3, "WChaRteMax": 4, "WDisChaRteMax": 5, "DisChaRte": 6,
    "SoCMax": 7, "SoCMin": 8, "SoCRsvMax": 9, "SoCRsvMin": 10, "SoC": 11, "DoD": 12, "SoH": 13,
    "NCyc": 14, "ChaSt": 16, "LocRemCtl": 17, "Hb": 18, "CtrlHb": 19, "AlmRst": 20, "Typ": 21,
    "State": 22, "StateVnd": 23, "WarrDt": 24, "Evt1": 26, "Evt2": 28, "EvtVnd1": 30, "EvtVnd2": 32,
    "V": 34, "VMax": 35, "VMin": 36, "CellVMax": 37, "CellVMaxStr": 38, "CellVMaxMod": 39,
    "CellVMin": 40, "CellVMinStr": 41, "CellVMinMod": 42, "CellVAvg": 43, "A": 44, "AChaMax": 45,
    "ADisChaMax": 46, "W": 47, "ReqInvState": 48, "ReqW": 49, "SetOp": 50, "SetInvState": 51,
    "AHRtg_SF": 52, "WHRtg_SF": 53, "WChaDisChaMax_SF": 54, "DisChaRte_SF": 55, "SoC_SF": 56,
    "DoD_SF": 57, "SoH_SF": 58, "V_SF": 59, "CellV_SF": 60, "A_SF": 61, "AMax_SF": 62, "W_SF": 63,
}  # fmt: skip

CHARGE_STATUS = {1: "off", 2: "empty", 3: "discharging", 4: "charging", 5: "full", 6: "holding", 7: "testing"}
BANK_STATE = {
    1: "disconnected", 2: "initializing", 3: "connected", 4: "standby", 5: "soc_protection",
    6: "suspending", 99: "fault",
}  # fmt: skip
EVT1_NAMES = (
    "communication_error", "over_temp_alarm", "over_temp_warning", "under_temp_alarm", "under_temp_warning",
    "over_charge_current_alarm", "over_charge_current_warning", "over_discharge_current_alarm",
    "over_discharge_current_warning", "over_volt_alarm", "over_volt_warning", "under_volt_alarm",
    "under_volt_warning", "under_soc_min_alarm", "under_soc_min_warning", "over_soc_max_alarm",
    "over_soc_max_warning", "voltage_imbalance_warning", "temperature_imbalance_alarm",
    "temperature_imbalance_warning", "contactor_error", "fan_error", "ground_fault", "open_door_error",
    "current_imbalance_warning", "other_alarm", "other_warning", "reserved_1", "configuration_alarm",
    "configuration_warning",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SunSpecBattery:
    """Model 802 values (None = not implemented by the device)."""

    capacity_ah: float | None
    energy_capacity_wh: float | None
    soc_pct: float | None
    soh_pct: float | None
    cycles: int | None
    charge_status: str | None
    state: str | None
    voltage_v: float | None
    voltage_max_v: float | None
    voltage_min_v: float | None
    cell_voltage_max_v: float | None
    cell_voltage_min_v: float | None
    cell_voltage_avg_v: float | None
    current_a: float | None
    power_w: float | None
    events_bitmask: int | None
    events: tuple[str, ...]


# point types in register order: H uint16/enum16, h int16/sunssf, I uint32/bitfield32
_TYPES = {"NCyc": "I", "WarrDt": "I", "Evt1": "I", "Evt2": "I", "EvtVnd1": "I", "EvtVnd2": "I", "A": "h", "W": "h",
          "ReqW": "h"}  # fmt: skip
_NAMES = sorted(OFF, key=OFF.__getitem__)
_LAYOUT = struct.Struct(">" + "".join("h" if n.endswith("_SF") else _TYPES.get(n, "H") for n in _NAMES))
_INDEX = {name: i for i, name in enumerate(_NAMES)}
_REGISTERS = struct.Struct(f">{MODEL_802_SIZE}H")
_NOT_IMPLEMENTED = {"H": NI_U16, "h": -0x8000, "I": NI_U32}


_NI = tuple(_NOT_IMPLEMENTED["h" if n.endswith("_SF") else _TYPES.get(n, "H")] for n in _NAMES)
_SF_FIRST = _INDEX["AHRtg_SF"]
_POW10 = {sf: 10.0**sf for sf in range(-10, 11)}


def decode_model_802(registers: Sequence[int]) -> SunSpecBattery:
    """Decode a model 802 block starting at its ID register (at least 64 registers)."""
    if len(registers) < MODEL_802_SIZE:
        raise DecodeError(f"sunspec 802: {len(registers)} registers, need {MODEL_802_SIZE}")
    try:
        raw = _LAYOUT.unpack(_REGISTERS.pack(*registers[:MODEL_802_SIZE]))
    except struct.error:
        raise DecodeError("sunspec 802: register values must be 16-bit") from None
    if raw[0] != MODEL_BATTERY:
        raise DecodeError(f"sunspec: model id {raw[0]} is not 802")
    if raw[1] < MODEL_802_LENGTH:
        raise DecodeError(f"sunspec 802: length {raw[1]} < {MODEL_802_LENGTH}")
    for i in range(_SF_FIRST, len(raw)):
        if raw[i] != _NI[i] and not -10 <= raw[i] <= 10:
            raise DecodeError(f"sunspec 802: scale factor {_NAMES[i]} = {raw[i]} outside -10..10")

    def v(name: str) -> int | None:
        i = _INDEX[name]
        value: int = raw[i]
        return None if value == _NI[i] else value

    def scaled(name: str, sf_name: str) -> float | None:
        value, sf = v(name), v(sf_name)
        if value is None or sf is None:
            return None
        return round(value * _POW10[sf], -sf) if sf < 0 else float(value * _POW10[sf])

    evt1 = v("Evt1")
    charge = v("ChaSt")
    state = v("State")
    return SunSpecBattery(
        capacity_ah=scaled("AHRtg", "AHRtg_SF"),
        energy_capacity_wh=scaled("WHRtg", "WHRtg_SF"),
        soc_pct=scaled("SoC", "SoC_SF"),
        soh_pct=scaled("SoH", "SoH_SF"),
        cycles=v("NCyc"),
        charge_status=None if charge is None else CHARGE_STATUS.get(charge) or f"unknown ({charge})",
        state=None if state is None else BANK_STATE.get(state) or f"unknown ({state})",
        voltage_v=scaled("V", "V_SF"),
        voltage_max_v=scaled("VMax", "V_SF"),
        voltage_min_v=scaled("VMin", "V_SF"),
        cell_voltage_max_v=scaled("CellVMax", "CellV_SF"),
        cell_voltage_min_v=scaled("CellVMin", "CellV_SF"),
        cell_voltage_avg_v=scaled("CellVAvg", "CellV_SF"),
        current_a=scaled("A", "A_SF"),
        power_w=scaled("W", "W_SF"),
        events_bitmask=evt1,
        events=() if not evt1 else tuple(n for i, n in enumerate(EVT1_NAMES) if evt1 >> i & 1),
    )


ReadFn = Callable[[int, int], Sequence[int]]


def find_models(read: ReadFn, bases: Sequence[int] = BASES, max_models: int = 64) -> tuple[int, dict[int, int]]:
    """Find the SunSpec base and the start register of every model: ``(base, {model id: address})``.

    ``read(address, count)`` returns holding registers or raises a SourceError; a base whose read fails
    with a Modbus exception (no such register) is skipped, other errors propagate.
    """
    for base in bases:
        try:
            head = tuple(read(base, 2))
        except ModbusExceptionError:
            continue
        if head != MARKER:
            continue
        models: dict[int, int] = {}
        address = base + 2
        for _ in range(max_models):
            if address + 2 > 0x10000:
                raise DecodeError(f"sunspec: model chain runs past register 65535 (base {base})")
            model_id, length = read(address, 2)
            if model_id == END_ID:
                return base, models
            models.setdefault(model_id, address)
            address += 2 + length
        raise DecodeError(f"sunspec: no end model after {max_models} models (base {base})")
    raise DecodeError(f"sunspec: no 'SunS' marker at {', '.join(str(b) for b in bases)}")
