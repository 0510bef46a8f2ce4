"""SBS source: ``sbs:/dev/i2c-1?address=0x0b[&pec=1&cells=4&timeout=1 ...]``.

One poll reads Voltage, Current, Temperature and RelativeStateOfCharge, plus CellVoltage1..N
(0x3F..0x3C, TI bq40z50 and compatibles) when ``cells=N`` (1..4) is given. ``pec=1`` makes the kernel
check the SMBus Packet Error Code of every transfer (recommended on long wires; the adapter must
support it). The cell count is not readable over SBS, so pack-voltage limits use ``cells``; without
it only 0 < V <= 65.535 V is checked.

Linux errno of a failed transfer -> typed error: EBADMSG (PEC mismatch) -> ChecksumError;
ETIMEDOUT, EREMOTEIO, ENXIO, EAGAIN (no ACK, gauge asleep or absent) -> SourceTimeout; EPROTO, EIO
(bad block length, bus error) -> FramingError; anything else (bus gone) -> SourceUnavailable.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import replace

from hardware.bms.options import DriverOptions, make_source_id, parse_common_options
from hardware.bms.polling import PolledSource, build_sample
from hardware.errors import (
    ChecksumError,
    FramingError,
    SourceConfigError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from hardware.sbs.bus import SMBusLike, bus_number, open_bus
from hardware.sbs.registers import (
    CELL_REGISTERS,
    CURRENT,
    MAX_CELLS,
    RELATIVE_STATE_OF_CHARGE,
    TEMPERATURE,
    VOLTAGE,
    decode_reading,
)
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_ADDRESS = 0x0B
SBS_MAX_VOLTAGE_V = 65.535

_TIMEOUT_ERRNOS = {errno.ETIMEDOUT, errno.EREMOTEIO, errno.ENXIO, errno.EAGAIN}
_FRAMING_ERRNOS = {errno.EPROTO, errno.EIO}


def map_os_error(exc: OSError, what: str) -> SourceError:
    code = exc.errno
    if code == errno.EBADMSG:
        return ChecksumError(f"{what}: PEC mismatch ({exc})")
    if code in _TIMEOUT_ERRNOS:
        return SourceTimeout(f"{what}: no answer ({exc})")
    if code in _FRAMING_ERRNOS:
        return FramingError(f"{what}: bus/protocol error ({exc})")
    return SourceUnavailable(f"{what}: {exc}")


class SbsSource(PolledSource):
    def __init__(
        self,
        source_id: str,
        *,
        path: str | None,
        options: DriverOptions,
        address: int = DEFAULT_ADDRESS,
        pec: bool = False,
        cells: int = 0,
        bus: SMBusLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id, options, clock)
        if path is None and bus is None:
            raise ValueError("either path or bus is required")
        if not 0 <= cells <= MAX_CELLS:
            raise SourceConfigError(f"sbs: cells must be 0..{MAX_CELLS}")
        self.path = path
        self.address = address
        self.pec = pec
        self.cells = cells
        self._clock = clock
        self._injected = bus
        self._bus: SMBusLike | None = None
        self._registers = [VOLTAGE, CURRENT, TEMPERATURE, RELATIVE_STATE_OF_CHARGE] + [
            CELL_REGISTERS[n] for n in range(1, cells + 1)
        ]

    def _connect(self) -> None:
        if self._injected is not None:
            bus = self._injected
            if self.pec:
                bus.pec = 1
        else:
            assert self.path is not None
            bus = open_bus(self.path, self.pec)
        self._bus = bus

    def _disconnect(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and bus is not self._injected:
            with contextlib.suppress(OSError):
                bus.close()

    def _read_word(self, register: int) -> int:
        assert self._bus is not None
        started = self._clock()
        try:
            word = self._bus.read_word_data(self.address, register)
        except OSError as exc:
            raise map_os_error(exc, f"sbs 0x{self.address:02x} register 0x{register:02x}") from exc
        elapsed = self._clock() - started
        if elapsed > self.options.timeout_s:
            raise SourceTimeout(
                f"sbs register 0x{register:02x}: answer took {elapsed:.2f} s (> {self.options.timeout_s:g} s)"
            )
        return word

    def _read(self) -> Sample:
        words = {register: self._read_word(register) for register in self._registers}
        reading = decode_reading(words, self.cells)
        return build_sample(
            self,
            voltage_v=reading.voltage_v,
            current_a=reading.current_a,
            temperatures_c=(reading.temperature_c,),
            soc_pct=float(reading.soc_pct),
            cell_voltages_v=reading.cell_voltages_v,
        )


def create(url: SourceUrl, settings: SourceSettings, bus: SMBusLike | None = None) -> SbsSource:
    if not url.path:
        raise SourceConfigError(f"source URL {url.raw!r}: missing bus device (sbs:/dev/i2c-1)")
    if bus is None:
        bus_number(url.path)  # validate the path form early
    options = parse_common_options(url, settings, extra_options={"address", "pec", "cells"})
    address = url.int_option("address", DEFAULT_ADDRESS)
    if not 0x03 <= address <= 0x77:
        raise SourceConfigError(f"source URL {url.raw!r}: I2C address must be 0x03..0x77")
    cells = url.int_option("cells", 0)
    if not 0 <= cells <= MAX_CELLS:
        raise SourceConfigError(f"source URL {url.raw!r}: cells must be 1..{MAX_CELLS} for SBS")
    if options.limits.cells is None:
        options = replace(options, limits=replace(options.limits, max_pack_voltage_v=SBS_MAX_VOLTAGE_V))
    return SbsSource(
        make_source_id("sbs", url.path, f"0x{address:02x}"),
        path=url.path,
        options=options,
        address=address,
        pec=bool(url.int_option("pec", 0)),
        cells=cells,
        bus=bus,
    )
