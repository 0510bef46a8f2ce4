"""SBS gauge emulator: an object with smbus2's ``SMBus`` methods, answering like a TI bq40z50.

Faults (per transfer): bad_checksum -> with PEC enabled the transfer fails with EBADMSG as the
kernel reports a PEC mismatch (without PEC a corrupted word is not detectable, as on a real bus);
truncated -> EPROTO; silence -> EREMOTEIO (no ACK); slow -> the transfer takes ``slow_delay_s``
(clock stretching); garbage -> EIO (bus error); implausible -> 25x pack voltage; exception -> as none.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading

from devkit.bms_emulators.encoding import i16, u16
from devkit.bms_emulators.faults import IMPLAUSIBLE_FACTOR, Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from hardware.sbs import registers as reg
from hardware.sbs.pec import read_word_pec
from hardware.simulator.state import PackState

log = logging.getLogger(__name__)

MANUFACTURER_NAME = 0x20
DEVICE_NAME = 0x21
DEVICE_CHEMISTRY = 0x22
_BLOCKS = {MANUFACTURER_NAME: b"battwin", DEVICE_NAME: b"bq40z50-emu", DEVICE_CHEMISTRY: b"LION"}
_SPEC_INFO_V11_PEC = 0x0031  # SBS 1.1 with PEC support


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class SbsEmulatorBus:
    """Stands in for ``smbus2.SMBus(N)`` with one gauge at ``address``."""

    def __init__(
        self,
        feed: PackFeed,
        faults: FaultControl | None = None,
        address: int = 0x0B,
        capacity_mode_energy: bool = False,
    ) -> None:
        self.feed = feed
        self.faults = faults or FaultControl()
        self.address = address
        self.battery_mode = reg.CAPACITY_MODE_BIT if capacity_mode_energy else 0
        self.pec = 0
        self.closed = False
        self.last_state: PackState | None = None
        self._stop = threading.Event()
        self.transfers = 0

    # -- register model ----------------------------------------------------------------------------
    def words(self, state: PackState) -> dict[int, int]:
        energy = bool(self.battery_mode & reg.CAPACITY_MODE_BIT)
        nominal_v = 3.6 * len(state.cell_voltages_v)

        def capacity(ah: float) -> int:
            return u16(ah * nominal_v * 100) if energy else u16(ah * 1000)

        words = {
            reg.BATTERY_MODE: self.battery_mode,
            reg.TEMPERATURE: u16((state.temperatures_c[0] + reg.KELVIN_OFFSET_C) * 10),
            reg.VOLTAGE: u16(state.voltage_v * 1000),
            reg.CURRENT: i16(state.current_a * 1000) & 0xFFFF,
            reg.AVERAGE_CURRENT: i16(state.current_a * 1000) & 0xFFFF,
            reg.RELATIVE_STATE_OF_CHARGE: u16(state.soc_pct),
            reg.REMAINING_CAPACITY: capacity(state.remaining_ah),
            reg.FULL_CHARGE_CAPACITY: capacity(state.full_capacity_ah),
            reg.BATTERY_STATUS: 0x0080 if state.current_a >= 0 else 0x00C0,  # INITIALIZED (+ DISCHARGING)
            reg.CYCLE_COUNT: u16(state.cycle_count),
            reg.DESIGN_CAPACITY: capacity(state.design_capacity_ah),
            reg.SPECIFICATION_INFO: _SPEC_INFO_V11_PEC,
        }
        for n, volts in enumerate(state.cell_voltages_v[: reg.MAX_CELLS], start=1):
            words[reg.CELL_REGISTERS[n]] = u16(volts * 1000)
        for n in range(len(state.cell_voltages_v) + 1, reg.MAX_CELLS + 1):
            words[reg.CELL_REGISTERS[n]] = 0
        return words

    # -- transfer plumbing -------------------------------------------------------------------------
    def _begin(self, i2c_addr: int) -> Fault:
        if self.closed:
            raise _oserror(errno.EBADF)
        if i2c_addr != self.address:
            raise _oserror(errno.ENXIO)
        self.transfers += 1
        fault = self.faults.pick()
        if fault is Fault.SILENCE:
            raise _oserror(errno.EREMOTEIO)
        if fault is Fault.TRUNCATED:
            raise _oserror(errno.EPROTO)
        if fault is Fault.GARBAGE:
            raise _oserror(errno.EIO)
        if fault is Fault.SLOW:
            self._stop.wait(self.faults.slow_delay_s)
        return fault

    def _state(self, fault: Fault) -> PackState:
        state = self.feed.state()
        if fault is Fault.IMPLAUSIBLE:
            state = dataclasses.replace(state, voltage_v=state.voltage_v * IMPLAUSIBLE_FACTOR)
        self.last_state = state
        return state

    # -- smbus2.SMBus surface ----------------------------------------------------------------------
    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        fault = self._begin(i2c_addr)
        words = self.words(self._state(fault))
        if register not in words:
            raise _oserror(errno.EREMOTEIO)  # the gauge NACKs an unknown command
        word = words[register]
        if fault is Fault.BAD_CHECKSUM:
            if self.pec:
                sent = read_word_pec(self.address, register, word & 0xFF, word >> 8) ^ 0x5A
                if sent != read_word_pec(self.address, register, word & 0xFF, word >> 8):
                    raise _oserror(errno.EBADMSG)
            word ^= 0x0101  # without PEC a corrupted word goes through undetected
        return word

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self.read_word_data(i2c_addr, register, force) & 0xFF

    def read_block_data(self, i2c_addr: int, register: int, force: bool | None = None) -> list[int]:
        self._begin(i2c_addr)
        block = _BLOCKS.get(register)
        if block is None:
            raise _oserror(errno.EREMOTEIO)
        return list(block)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, force: bool | None = None) -> list[int]:
        if register in _BLOCKS:
            data = [len(_BLOCKS[register]), *self.read_block_data(i2c_addr, register, force)]
        else:
            word = self.read_word_data(i2c_addr, register, force)
            data = [word & 0xFF, word >> 8]
        return (data + [0] * length)[:length]

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        self._begin(i2c_addr)
        if register == reg.BATTERY_MODE:
            self.battery_mode = value & 0xFFFF
        else:
            log.debug("sbs emulator: write 0x%04x to 0x%02x ignored", value, register)

    def close(self) -> None:
        self.closed = True
        self._stop.set()

    def reopen(self) -> None:
        """Make a closed emulator usable again (what reopening /dev/i2c-N is for a real bus)."""
        self.closed = False
        self._stop.clear()
