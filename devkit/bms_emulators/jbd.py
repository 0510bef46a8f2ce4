"""JBD/Xiaoxiang BMS emulator: answers registers 0x03, 0x04 and 0x05 on a pty."""

from __future__ import annotations

from devkit.bms_emulators.encoding import i16, u8, u16
from devkit.bms_emulators.pty_device import PtyDeviceEmulator
from hardware.bms.jbd.decode import KELVIN_OFFSET_DK
from hardware.bms.jbd.framing import (
    END,
    READ,
    REG_BASIC_INFO,
    REG_CELL_VOLTAGES,
    REG_HARDWARE_NAME,
    REQUEST_SPEC,
    START,
    build_response,
)
from hardware.simulator.state import PackState

HARDWARE_NAME = b"BATTWIN-EMU-JBD"
ERROR_STATUS = 0x80
_DATE_2024_01_15 = (24 << 9) | (1 << 5) | 15


def basic_info_payload(state: PackState) -> bytes:
    temps = state.temperatures_c
    out = bytearray()
    out += u16(state.voltage_v * 100).to_bytes(2, "big")
    out += i16(state.current_a * 100).to_bytes(2, "big", signed=True)
    out += u16(state.remaining_ah * 100).to_bytes(2, "big")
    out += u16(state.design_capacity_ah * 100).to_bytes(2, "big")
    out += u16(state.cycle_count).to_bytes(2, "big")
    out += _DATE_2024_01_15.to_bytes(2, "big")
    out += bytes(4)  # balance bits
    out += bytes(2)  # protection bits
    out += bytes([0x21, u8(state.soc_pct), 0x03, len(state.cell_voltages_v), len(temps)])
    for temp in temps:
        out += u16(temp * 10 + KELVIN_OFFSET_DK).to_bytes(2, "big")
    return bytes(out)


def cell_voltages_payload(state: PackState) -> bytes:
    return b"".join(u16(v * 1000).to_bytes(2, "big") for v in state.cell_voltages_v)


class JbdEmulator(PtyDeviceEmulator):
    protocol = "jbd"
    request_spec = REQUEST_SPEC
    marker_bytes = bytes([START, END])

    def respond(self, request: bytes, state: PackState) -> list[bytes] | None:
        register = request[2]
        if request[1] != READ:
            return [build_response(register, b"")]  # acknowledge writes, change nothing
        if register == REG_BASIC_INFO:
            return [build_response(register, basic_info_payload(state))]
        if register == REG_CELL_VOLTAGES:
            return [build_response(register, cell_voltages_payload(state))]
        if register == REG_HARDWARE_NAME:
            return [build_response(register, HARDWARE_NAME)]
        return [build_response(register, b"", status=ERROR_STATUS)]

    def error_reply(self, request: bytes) -> list[bytes] | None:
        return [build_response(request[2], b"", status=ERROR_STATUS)]

    def corrupt_checksum(self, frame: bytes) -> bytes:
        return frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
