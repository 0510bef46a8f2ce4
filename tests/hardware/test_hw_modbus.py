"""Modbus drivers end to end through pymodbus' own server (TCP, and RTU over a pty), SunSpec and YAML maps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devkit.bms_emulators.faults import Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.modbus import ModbusEmulator
from devkit.bms_emulators.sunspec_model import battery_model
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
from hardware.modbus.driver import ModbusSource, create_rtu, create_tcp
from hardware.modbus.errors import ModbusExceptionError
from hardware.modbus.regmap import load_map
from hardware.modbus.sunspec import MODEL_802_SIZE, decode_model_802, find_models
from hardware.registry import create_source, parse_source_url
from tests.hardware.hw_support import Resolution, assert_matches, make_feed, settings
from tests.support import real_component, scaled

# a healthy reply from the pymodbus server beats TIMEOUT_S even on a loaded machine; a SLOW fault outlasts it
TIMEOUT_S = scaled(0.5)
SLOW_S = 2 * TIMEOUT_S
SUNSPEC_RES = Resolution(0.0051, 0.0051, 0.051, 0, 0)
MAP_RES = Resolution(0.00051, 0.0051, 1e-3, 0.00051, 0.051)


@dataclass
class Rig:
    feed: PackFeed
    faults: FaultControl
    emulator: ModbusEmulator
    source: ModbusSource
    res: Resolution
    sunspec: bool


def _rig(transport: str, map_ref: str) -> tuple[Rig, ModbusEmulator]:
    feed = make_feed()
    faults = FaultControl(seed=5, slow_delay_s=SLOW_S)
    regmap = None if map_ref == "sunspec" else load_map(map_ref)
    emulator = ModbusEmulator(feed, faults, transport=transport, regmap=regmap, map_ref=map_ref)  # type: ignore[arg-type]
    emulator.start()
    # SunSpec 802 has no cell count: cells= gives the pack-voltage limits (the map says cells: 4 itself)
    cells = "&cells=4" if regmap is None else ""
    url = parse_source_url(f"{emulator.url}&timeout={TIMEOUT_S}&backoff_min_s=0&retries=0{cells}")
    source = (create_tcp if transport == "tcp" else create_rtu)(url, settings())
    source.open()
    res = SUNSPEC_RES if regmap is None else MAP_RES
    return Rig(feed, faults, emulator, source, res, regmap is None), emulator


@pytest.fixture(params=["tcp-sunspec", "tcp-generic_pack", "rtu-sunspec", "rtu-generic_pack"])
@real_component("pymodbus server")
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    transport, map_ref = request.param.split("-", 1)
    rig, emulator = _rig(transport, map_ref)
    yield rig
    rig.source.close()
    emulator.stop()


def _check(rig: Rig) -> None:
    sample = rig.source.poll()
    state = rig.emulator.last_state
    assert state is not None
    assert_matches(sample, state, rig.res, cells=not rig.sunspec, temps=not rig.sunspec)


def test_poll_matches_the_simulator(rig: Rig) -> None:
    _check(rig)
    first = rig.emulator.last_state
    rig.feed.advance(900)
    _check(rig)
    assert rig.emulator.last_state is not None and first is not None
    assert rig.emulator.last_state.soc_pct < first.soc_pct
    if rig.sunspec:
        assert rig.source.model_802_address == 40000 + 2 + 68


FAULTS_TCP: dict[Fault, type[SourceError]] = {
    Fault.EXCEPTION: ModbusExceptionError,
    Fault.SILENCE: SourceTimeout,
    Fault.SLOW: SourceTimeout,
    Fault.TRUNCATED: FramingError,
    Fault.GARBAGE: FramingError,
    Fault.IMPLAUSIBLE: ImplausibleValueError,
}
FAULTS_RTU: dict[Fault, type[SourceError]] = {
    **FAULTS_TCP,
    Fault.BAD_CHECKSUM: ChecksumError,
}


# these faults end in the client waiting out TIMEOUT_S (a scaled deadline): slow
WAITS_OUT_THE_TIMEOUT = {Fault.SILENCE, Fault.SLOW, Fault.TRUNCATED, Fault.GARBAGE, Fault.BAD_CHECKSUM}


@pytest.mark.parametrize(
    "fault",
    [pytest.param(f, marks=pytest.mark.slow) if f in WAITS_OUT_THE_TIMEOUT else f for f in FAULTS_RTU],
    ids=str,
)
def test_faults_then_recovery(rig: Rig, fault: Fault) -> None:
    expected = (FAULTS_RTU if rig.emulator.transport == "rtu" else FAULTS_TCP).get(fault)
    rig.faults.set(fault)
    if expected is None:  # bad_checksum over TCP: Modbus TCP has no checksum, the emulator sends it as is
        _check(rig)
        return
    with pytest.raises(expected):
        rig.source.poll()
    rig.faults.clear()
    _check(rig)


def test_exception_code_is_reported() -> None:
    rig, emulator = _rig("tcp", "sunspec")
    try:
        rig.faults.set(Fault.EXCEPTION, exception_code=0x06)
        with pytest.raises(ModbusExceptionError, match="busy") as info:
            rig.source.poll()
        assert info.value.code == 0x06
    finally:
        rig.source.close()
        emulator.stop()


def test_connection_refused_is_unavailable() -> None:
    with ModbusEmulator(make_feed()) as emulator:
        port = emulator.port
    source = create_source(f"modbus-tcp://127.0.0.1:{port}?unit=1&timeout=0.3", settings())
    with pytest.raises(SourceUnavailable):
        source.open()


def test_sunspec_discovery_walks_the_model_chain() -> None:
    feed = make_feed()
    image = {0: [0x5375, 0x6E53], 2: [1, 4], 8: [802, 62], 72: [0xFFFF, 0]}

    def read(address: int, count: int) -> list[int]:
        if address == 40000:
            raise ModbusExceptionError(2, 3, address, count)
        return image[address][:count] if address in image else [0] * count

    base, models = find_models(read)
    assert base == 0 and models == {1: 2, 802: 8}
    with pytest.raises(DecodeError, match="no 'SunS'"):
        find_models(lambda a, c: [0] * c)
    regs = battery_model(feed.state())
    assert len(regs) == MODEL_802_SIZE
    battery = decode_model_802(regs)
    assert battery.voltage_v == pytest.approx(feed.state().voltage_v, abs=0.006)
    assert battery.soh_pct is not None and 90 < battery.soh_pct <= 100.05
    assert battery.state == "connected" and battery.events == ()


def test_sunspec_not_implemented_points_decode_to_none() -> None:
    regs = battery_model(make_feed().state())
    regs[44] = 0x8000  # A not implemented
    regs[61] = 0x8000  # A_SF not implemented
    regs[13] = 0xFFFF  # SoH
    battery = decode_model_802(regs)
    assert battery.current_a is None and battery.soh_pct is None
    regs[59] = 20  # V_SF out of range
    with pytest.raises(DecodeError, match="scale factor"):
        decode_model_802(regs)


def test_config_errors() -> None:
    with pytest.raises(SourceConfigError, match="not found"):
        create_source("modbus-tcp://127.0.0.1:502?map=/nonexistent.yaml", settings())
    with pytest.raises(SourceConfigError, match="unit"):
        create_source("modbus-tcp://127.0.0.1:502?unit=300", settings())
    with pytest.raises(SourceConfigError, match="host"):
        create_source("modbus-tcp:?unit=1", settings())
    with pytest.raises(SourceConfigError, match="parity"):
        create_source("modbus-rtu:/dev/ttyUSB0?parity=X", settings())
    with pytest.raises(SourceConfigError, match="cells"):
        create_source("modbus-rtu:/dev/ttyUSB0?map=generic_pack&cells=8", settings())
