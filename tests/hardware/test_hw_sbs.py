"""SBS gauge driver against the SMBus emulator object; PEC and register decoding."""

from __future__ import annotations

import errno

import pytest

from devkit.bms_emulators.faults import Fault, FaultControl
from devkit.bms_emulators.sbs import SbsEmulatorBus
from hardware.errors import (
    ChecksumError,
    DecodeError,
    FramingError,
    ImplausibleValueError,
    SourceConfigError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from hardware.registry import parse_source_url
from hardware.sbs import registers as reg
from hardware.sbs.driver import SbsSource, create, map_os_error
from hardware.sbs.pec import crc8, read_word_pec
from tests.hardware.hw_support import Resolution, assert_matches, make_feed, settings
from tests.support import scaled

# each register read of the in-process bus beats TIMEOUT_S even on a loaded machine; a SLOW fault outlasts it
TIMEOUT_S = scaled(0.25)
SLOW_S = 3 * TIMEOUT_S
RES = Resolution(0.00051, 0.00051, 0.51, 0.00051, 0.051)


def _rig(query: str = "", **bus_kwargs: object) -> tuple[SbsEmulatorBus, SbsSource]:
    bus = SbsEmulatorBus(make_feed(), FaultControl(seed=3, slow_delay_s=SLOW_S), **bus_kwargs)  # type: ignore[arg-type]
    source = create(
        parse_source_url(f"sbs:/dev/i2c-1?address=0x0b&timeout={TIMEOUT_S}&backoff_min_s=0{query}"), settings(), bus=bus
    )
    source.open()
    return bus, source


def test_poll_matches_the_simulator_with_cells() -> None:
    bus, source = _rig("&cells=4")
    sample = source.poll()
    assert bus.last_state is not None
    assert_matches(sample, bus.last_state, RES)
    bus.feed.advance(600)
    later = source.poll()
    assert_matches(later, bus.last_state, RES)
    assert later.soc_pct is not None and sample.soc_pct is not None and later.soc_pct <= sample.soc_pct
    assert source.source_id == "sbs:i2c-1:0x0b"


def test_poll_without_cells() -> None:
    bus, source = _rig()
    sample = source.poll()
    assert sample.cell_voltages_v is None
    assert bus.last_state is not None
    assert_matches(sample, bus.last_state, RES, cells=False)


FAULTS: dict[Fault, type[SourceError]] = {
    Fault.BAD_CHECKSUM: ChecksumError,
    Fault.TRUNCATED: FramingError,
    Fault.SILENCE: SourceTimeout,
    Fault.SLOW: SourceTimeout,
    Fault.GARBAGE: FramingError,
    Fault.IMPLAUSIBLE: ImplausibleValueError,
}


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=pytest.mark.slow) if f is Fault.SLOW else f for f in FAULTS], ids=str
)  # SLOW waits out SLOW_S (a scaled deadline)
def test_faults_with_pec(fault: Fault) -> None:
    bus, source = _rig("&pec=1&cells=4")
    assert bus.pec == 1
    bus.faults.set(fault)
    with pytest.raises(FAULTS[fault]):
        source.poll()
    bus.faults.clear()
    sample = source.poll()
    assert bus.last_state is not None
    assert_matches(sample, bus.last_state, RES)


def test_without_pec_a_corrupted_word_is_not_detected_by_the_bus() -> None:
    """Honest emulation: without PEC the bus cannot see corruption; plausibility is the last guard."""
    bus, source = _rig("&cells=4")
    bus.faults.set(Fault.BAD_CHECKSUM)
    try:
        sample = source.poll()
    except ImplausibleValueError:
        return
    assert bus.last_state is not None
    assert abs(sample.voltage_v - bus.last_state.voltage_v) > 0.2  # 0x0101 flipped: the value is off


def test_missing_bus_device_is_unavailable() -> None:
    source = create(parse_source_url("sbs:/dev/i2c-97?backoff_min_s=0"), settings())
    with pytest.raises(SourceUnavailable):
        source.open()


def test_bad_urls() -> None:
    with pytest.raises(SourceConfigError):
        create(parse_source_url("sbs:/dev/ttyUSB0"), settings())
    with pytest.raises(SourceConfigError):
        create(parse_source_url("sbs:/dev/i2c-1?address=0x99"), settings())
    with pytest.raises(SourceConfigError):
        create(parse_source_url("sbs:/dev/i2c-1?cells=5"), settings())
    with pytest.raises(SourceConfigError, match="unknown option"):
        create(parse_source_url("sbs:/dev/i2c-1?celss=4"), settings())


def test_errno_mapping() -> None:
    assert isinstance(map_os_error(OSError(errno.EBADMSG, "x"), "r"), ChecksumError)
    assert isinstance(map_os_error(OSError(errno.EREMOTEIO, "x"), "r"), SourceTimeout)
    assert isinstance(map_os_error(OSError(errno.ETIMEDOUT, "x"), "r"), SourceTimeout)
    assert isinstance(map_os_error(OSError(errno.EPROTO, "x"), "r"), FramingError)
    assert isinstance(map_os_error(OSError(errno.ENODEV, "x"), "r"), SourceUnavailable)


def test_crc8_known_values() -> None:
    # CRC-8 (poly 0x07, init 0): the standard check value for "123456789" is 0xF4
    assert crc8(b"123456789") == 0xF4
    assert crc8(b"") == 0
    # PEC of a read-word from 0x0B, command 0x09, data 0x3A98 (15000 mV)
    assert read_word_pec(0x0B, 0x09, 0x98, 0x3A) == crc8(bytes([0x16, 0x09, 0x17, 0x98, 0x3A]))


def test_register_decoding() -> None:
    assert reg.decode_register(reg.TEMPERATURE, 2982) == {"temperature_c": 25.05}
    assert reg.decode_register(reg.CURRENT, 0xFC18) == {"current_a": -1.0}
    assert reg.decode_register(reg.REMAINING_CAPACITY, 1500) == {"remaining_capacity_ah": 1.5}
    assert reg.decode_register(reg.REMAINING_CAPACITY, 1500, capacity_mode_energy=True) == {"remaining_energy_wh": 15.0}
    assert reg.decode_register(reg.CELL_VOLTAGE_4, 3700) == {"cell4_voltage_v": 3.7}
    with pytest.raises(DecodeError):
        reg.decode_register(0x55, 1)
    good = bytes([0x09, 0x98, 0x3A])
    assert reg.decode_transaction(good)["voltage_v"] == 15.0
    with_pec = good + bytes([read_word_pec(0x0B, *good)])
    assert reg.decode_transaction(with_pec)["voltage_v"] == 15.0
    with pytest.raises(ChecksumError):
        reg.decode_transaction(good + bytes([read_word_pec(0x0B, *good) ^ 1]))
    with pytest.raises(FramingError):
        reg.decode_transaction(good[:2])


def test_capacity_mode_on_the_emulator() -> None:
    bus = SbsEmulatorBus(make_feed(), capacity_mode_energy=True)
    mode = bus.read_word_data(0x0B, reg.BATTERY_MODE)
    assert mode & reg.CAPACITY_MODE_BIT
    bus.write_word_data(0x0B, reg.BATTERY_MODE, 0)
    assert not bus.read_word_data(0x0B, reg.BATTERY_MODE) & reg.CAPACITY_MODE_BIT
    assert bytes(bus.read_block_data(0x0B, 0x20)) == b"battwin"
    assert bus.read_i2c_block_data(0x0B, 0x09, 2)[0] == bus.read_word_data(0x0B, 0x09) & 0xFF
    with pytest.raises(OSError):
        bus.read_word_data(0x0C, reg.VOLTAGE)
