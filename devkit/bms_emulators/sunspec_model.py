"""Register images of SunSpec models built from a PackState (for the Modbus emulator)."""

from __future__ import annotations

from devkit.bms_emulators.encoding import i16, u16, u32
from hardware.modbus.sunspec import (
    END_ID,
    MARKER,
    MODEL_802_LENGTH,
    MODEL_802_SIZE,
    MODEL_BATTERY,
    MODEL_COMMON,
    NI_I16,
    NI_U16,
    OFF,
)
from hardware.simulator.state import PackState

COMMON_LENGTH = 66
# scale factors the emulator announces (value = raw * 10**sf)
SF = {
    "AHRtg_SF": -2, "WHRtg_SF": 0, "WChaDisChaMax_SF": 0, "DisChaRte_SF": NI_I16, "SoC_SF": -1,
    "DoD_SF": NI_I16, "SoH_SF": -1, "V_SF": -2, "CellV_SF": -3, "A_SF": -2, "AMax_SF": -1, "W_SF": 0,
}  # fmt: skip


def _text(value: str, registers: int) -> list[int]:
    raw = value.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def common_model(serial: str = "EMU-0001") -> list[int]:
    """Model 1 (common): Mn(16) Md(16) Opt(8) Vr(8) SN(16) DA(1) Pad(1)."""
    body = (
        _text("battwin", 16)
        + _text("battery-emulator", 16)
        + _text("", 8)
        + _text("1.0", 8)
        + _text(serial, 16)
        + [1, NI_I16]
    )
    return [MODEL_COMMON, COMMON_LENGTH, *body]


def _scaled(value: float, sf_name: str, signed: bool = False) -> int:
    scaled = value / 10.0 ** SF[sf_name]
    return i16(scaled) & 0xFFFF if signed else u16(scaled)


def battery_model(state: PackState, current_sign: int = 1, heartbeat: int = 0) -> list[int]:
    """Model 802 (64 registers) from a pack state."""
    regs = [NI_U16] * MODEL_802_SIZE
    cells = state.cell_voltages_v
    nominal_v = 3.6 * len(cells)

    def put(name: str, value: int) -> None:
        regs[OFF[name]] = value & 0xFFFF

    def put32(name: str, value: int) -> None:
        regs[OFF[name]] = (value >> 16) & 0xFFFF
        regs[OFF[name] + 1] = value & 0xFFFF

    for name, sf in SF.items():
        put(name, sf)
    put("ID", MODEL_BATTERY)
    put("L", MODEL_802_LENGTH)
    put("AHRtg", _scaled(state.design_capacity_ah, "AHRtg_SF"))
    put("WHRtg", _scaled(state.design_capacity_ah * nominal_v, "WHRtg_SF"))
    put("WChaRteMax", _scaled(state.design_capacity_ah * nominal_v, "WChaDisChaMax_SF"))
    put("WDisChaRteMax", _scaled(2 * state.design_capacity_ah * nominal_v, "WChaDisChaMax_SF"))
    put("SoCMax", _scaled(100.0, "SoC_SF"))
    put("SoCMin", _scaled(0.0, "SoC_SF"))
    put("SoC", _scaled(state.soc_pct, "SoC_SF"))
    put("SoH", _scaled(100.0 * state.full_capacity_ah / state.design_capacity_ah, "SoH_SF"))
    put32("NCyc", u32(state.cycle_count))
    charging, discharging = state.current_a > 0.05, state.current_a < -0.05
    put("ChaSt", 4 if charging else 3 if discharging else 6)
    put("LocRemCtl", 0)
    put("Hb", heartbeat)
    put("CtrlHb", 0)
    put("AlmRst", 0)
    put("Typ", 4)  # lithium-ion
    put("State", 3)  # connected
    for name in ("Evt1", "Evt2", "EvtVnd1", "EvtVnd2"):
        put32(name, 0)
    put("V", _scaled(state.voltage_v, "V_SF"))
    put("CellVMax", _scaled(max(cells), "CellV_SF"))
    put("CellVMaxStr", 1)
    put("CellVMaxMod", 1)
    put("CellVMin", _scaled(min(cells), "CellV_SF"))
    put("CellVMinStr", 1)
    put("CellVMinMod", 1)
    put("CellVAvg", _scaled(sum(cells) / len(cells), "CellV_SF"))
    current = state.current_a * current_sign
    put("A", _scaled(current, "A_SF", signed=True))
    put("AChaMax", _scaled(state.design_capacity_ah, "AMax_SF"))
    put("ADisChaMax", _scaled(2 * state.design_capacity_ah, "AMax_SF"))
    put("W", _scaled(state.voltage_v * current, "W_SF", signed=True))
    put("ReqInvState", 0)
    put("ReqW", NI_I16)
    put("SetOp", 1)
    put("SetInvState", 3)
    return regs


def sunspec_image(state: PackState, current_sign: int = 1, heartbeat: int = 0) -> list[int]:
    """Marker + model 1 + model 802 + end model, starting at the base register."""
    return [
        *MARKER,
        *common_model(),
        *battery_model(state, current_sign, heartbeat),
        END_ID,
        0,
    ]


#: offset of model 802's ID register from the base
BATTERY_OFFSET = 2 + 2 + COMMON_LENGTH
