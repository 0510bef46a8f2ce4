"""JK-BMS (4E 57) emulator: answers "read all" with a full status frame on a pty."""

from __future__ import annotations

from devkit.bms_emulators.encoding import u8, u16, u32
from devkit.bms_emulators.pty_device import PtyDeviceEmulator
from hardware.bms.jk.decode import TAG_CELLS, TAG_LENGTHS
from hardware.bms.jk.framing import CMD_READ_ALL, MARKER, SPEC, TYPE_RESPONSE, build_frame
from hardware.simulator.state import PackState

SOURCE_BMS = 0x00

_TEXT = {
    0xB2: b"123456",
    0xB4: b"BattwinE",
    0xB5: b"2401",
    0xB7: b"11.XW_S11.26___",
    0xBA: b"BATTWIN-EMULATOR-JK-4E57",
}


def _temperature(temp_c: float) -> int:
    """JK encoding: 0..100 = °C, above 100 = negative (101 = -1 °C)."""
    raw = round(temp_c)
    return u16(raw if raw >= 0 else 100 - raw)


def _current(current_a: float) -> int:
    """Protocol version 1: bit 15 set = charging, bits 0-14 = |I| in 10 mA."""
    magnitude = min(0x7FFF, round(abs(current_a) * 100))
    return magnitude | 0x8000 if current_a > 0 else magnitude


def status_body(state: PackState) -> bytes:
    cells = state.cell_voltages_v
    temps = state.temperatures_c
    t1 = temps[0]
    t2 = temps[1] if len(temps) > 1 else temps[0]
    values: dict[int, int] = {
        0x80: _temperature(t1 + 2.0),
        0x81: _temperature(t1),
        0x82: _temperature(t2),
        0x83: u16(state.voltage_v * 100),
        0x84: _current(state.current_a),
        0x85: u8(state.soc_pct),
        0x86: min(2, len(temps)),
        0x87: u16(state.cycle_count),
        0x89: u32(state.equivalent_full_cycles * state.design_capacity_ah),
        0x8A: len(cells),
        0x8C: 0x0007,
        0x9B: 3300,
        0x9C: 10,
        0x9D: 1,
        0xA9: len(cells),
        0xAA: u32(state.design_capacity_ah),
        0xAB: 1,
        0xAC: 1,
        0xAF: 1,
        0xB1: 20,
        0xC0: 1,
    }
    out = bytearray([TAG_CELLS, 3 * len(cells)])
    for index, volts in enumerate(cells, start=1):
        out += bytes([index]) + u16(volts * 1000).to_bytes(2, "big")
    for tag, size in TAG_LENGTHS.items():  # every known tag, in table order, as a real frame has them
        if tag in _TEXT:
            out += bytes([tag]) + _TEXT[tag].ljust(size, b"\x00")[:size]
        else:
            out += bytes([tag]) + values.get(tag, 0).to_bytes(size, "big")
    return bytes(out)


class JkEmulator(PtyDeviceEmulator):
    protocol = "jk"
    request_spec = SPEC
    marker_bytes = MARKER

    def respond(self, request: bytes, state: PackState) -> list[bytes] | None:
        if request[8] != CMD_READ_ALL:
            return None
        return [build_frame(CMD_READ_ALL, status_body(state), source=SOURCE_BMS, transport_type=TYPE_RESPONSE)]

    def corrupt_checksum(self, frame: bytes) -> bytes:
        return frame[:-1] + bytes([frame[-1] ^ 0x5A])
