"""Daly BMS emulator: answers 0x90-0x98 on a pty (0x95/0x96 as several frames)."""

from __future__ import annotations

from devkit.bms_emulators.encoding import u8, u16, u32
from devkit.bms_emulators.faults import FaultControl
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.pty_device import PtyDeviceEmulator
from hardware.bms.daly.decode import (
    CELLS_PER_FRAME,
    CURRENT_OFFSET,
    ID_BALANCE,
    ID_CELL_EXTREMES,
    ID_CELL_VOLTAGES,
    ID_FAULTS,
    ID_MOSFET,
    ID_PACK,
    ID_STATUS,
    ID_TEMP_EXTREMES,
    ID_TEMPERATURES,
    TEMP_OFFSET_C,
    TEMPS_PER_FRAME,
)
from hardware.bms.daly.framing import SPEC, START, build_frame
from hardware.simulator.state import PackState

BMS_ADDRESS = 0x01


def _be16(value: int) -> bytes:
    return value.to_bytes(2, "big")


class DalyEmulator(PtyDeviceEmulator):
    protocol = "daly"
    request_spec = SPEC
    marker_bytes = bytes([START])

    def __init__(self, feed: PackFeed, faults: FaultControl | None = None, current_sign: int = 1) -> None:
        super().__init__(feed, faults)
        self.current_sign = current_sign

    def _frame(self, data_id: int, data: bytes) -> bytes:
        return build_frame(BMS_ADDRESS, data_id, data.ljust(8, b"\x00"))

    def respond(self, request: bytes, state: PackState) -> list[bytes] | None:
        data_id = request[2]
        cells = state.cell_voltages_v
        temps = state.temperatures_c
        if data_id == ID_PACK:
            current_raw = u16(CURRENT_OFFSET + self.current_sign * state.current_a * 10)
            data = (
                _be16(u16(state.voltage_v * 10))
                + _be16(u16(state.voltage_v * 10))
                + _be16(current_raw)
                + _be16(u16(state.soc_pct * 10))
            )
            return [self._frame(data_id, data)]
        if data_id == ID_CELL_EXTREMES:
            hi = max(range(len(cells)), key=cells.__getitem__)
            lo = min(range(len(cells)), key=cells.__getitem__)
            data = _be16(u16(cells[hi] * 1000)) + bytes([hi + 1]) + _be16(u16(cells[lo] * 1000)) + bytes([lo + 1])
            return [self._frame(data_id, data)]
        if data_id == ID_TEMP_EXTREMES:
            hi_t, lo_t = max(temps), min(temps)
            data = bytes(
                [
                    u8(hi_t + TEMP_OFFSET_C),
                    temps.index(hi_t) + 1,
                    u8(lo_t + TEMP_OFFSET_C),
                    temps.index(lo_t) + 1,
                ]
            )
            return [self._frame(data_id, data)]
        if data_id == ID_MOSFET:
            mode = 1 if state.current_a > 0.05 else 2 if state.current_a < -0.05 else 0
            data = bytes([mode, 1, 1, u8(state.cycle_count)]) + u32(state.remaining_ah * 1000).to_bytes(4, "big")
            return [self._frame(data_id, data)]
        if data_id == ID_STATUS:
            charging = state.current_a > 0.05
            data = bytes([len(cells), len(temps), int(charging), int(not charging), 0]) + _be16(u16(state.cycle_count))
            return [self._frame(data_id, data)]
        if data_id == ID_CELL_VOLTAGES:
            frames = []
            for n, i in enumerate(range(0, len(cells), CELLS_PER_FRAME), start=1):
                raw = [u16(v * 1000) for v in cells[i : i + CELLS_PER_FRAME]]
                raw += [0] * (CELLS_PER_FRAME - len(raw))
                frames.append(self._frame(data_id, bytes([n]) + b"".join(_be16(v) for v in raw)))
            return frames
        if data_id == ID_TEMPERATURES:
            frames = []
            for n, i in enumerate(range(0, len(temps), TEMPS_PER_FRAME), start=1):
                packed = bytes(u8(t + TEMP_OFFSET_C) for t in temps[i : i + TEMPS_PER_FRAME])
                frames.append(self._frame(data_id, bytes([n]) + packed))
            return frames
        if data_id in (ID_BALANCE, ID_FAULTS):
            return [self._frame(data_id, bytes(8))]
        return None

    def corrupt_checksum(self, frame: bytes) -> bytes:
        return frame[:-1] + bytes([frame[-1] ^ 0x5A])
