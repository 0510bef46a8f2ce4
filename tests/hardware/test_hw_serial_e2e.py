"""JBD, Daly and JK drivers end to end: driver -> pyserial -> pty -> emulator -> PackSimulator.

Each protocol: a poll reproduces the simulator's state within the protocol's resolution and follows
it as it evolves; every fault class ends in its typed error; the driver recovers when it clears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devkit.bms_emulators.daly import DalyEmulator
from devkit.bms_emulators.faults import Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.jbd import JbdEmulator
from devkit.bms_emulators.jk import JkEmulator
from devkit.bms_emulators.pty_device import PtyDeviceEmulator
from hardware.bms.daly.driver import create as create_daly
from hardware.bms.jbd.decode import JbdErrorReply
from hardware.bms.jbd.driver import create as create_jbd
from hardware.bms.jk.driver import create as create_jk
from hardware.bms.polling import PolledSource
from hardware.errors import (
    ChecksumError,
    FramingError,
    ImplausibleValueError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from hardware.registry import create_source, parse_source_url
from tests.hardware.hw_support import Resolution, assert_matches, make_feed, settings
from tests.support import real_component, scaled

# a healthy reply through the pty beats TIMEOUT_S even on a loaded machine (scaled); a SLOW fault outlasts it
TIMEOUT_S = scaled(0.4)
SLOW_S = 2.5 * TIMEOUT_S


@dataclass(frozen=True)
class Protocol:
    emulator: type[PtyDeviceEmulator]
    create: Callable[..., PolledSource]
    resolution: Resolution


PROTOCOLS = {
    "jbd": Protocol(JbdEmulator, create_jbd, Resolution(0.0051, 0.0051, 0.51, 0.00051, 0.051)),
    "daly": Protocol(DalyEmulator, create_daly, Resolution(0.051, 0.051, 0.051, 0.00051, 0.51)),
    "jk": Protocol(JkEmulator, create_jk, Resolution(0.0051, 0.0051, 0.51, 0.00051, 0.51)),
}


@dataclass
class Rig:
    name: str
    feed: PackFeed
    faults: FaultControl
    emulator: PtyDeviceEmulator
    source: PolledSource
    resolution: Resolution


def _open(name: str, query: str = "", retries: int = 0, **emulator_kwargs: Any) -> tuple[Rig, Callable[[], None]]:
    proto = PROTOCOLS[name]
    feed = make_feed()
    faults = FaultControl(seed=11, slow_delay_s=SLOW_S)
    emulator = proto.emulator(feed, faults, **emulator_kwargs)
    emulator.start()
    url = parse_source_url(f"{emulator.url}?timeout={TIMEOUT_S}&backoff_min_s=0{query}")
    source = proto.create(url, settings(retries))
    source.open()

    def teardown() -> None:
        source.close()
        emulator.stop()

    return Rig(name, feed, faults, emulator, source, proto.resolution), teardown


@pytest.fixture(params=sorted(PROTOCOLS))
@real_component("pty")
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    rig, teardown = _open(request.param)
    yield rig
    teardown()


def test_poll_matches_the_simulator_and_follows_it(rig: Rig) -> None:
    first = rig.source.poll()
    state = rig.emulator.last_state
    assert state is not None and state.current_a < -0.5  # discharging: the sign is exercised
    assert_matches(first, state, rig.resolution)
    assert first.source_id.startswith(f"{rig.name}:")
    assert not first.simulated

    rig.feed.advance(900.0)
    second = rig.source.poll()
    later = rig.emulator.last_state
    assert later is not None and later.t_s > state.t_s
    assert_matches(second, later, rig.resolution)
    assert second.soc_pct is not None and first.soc_pct is not None
    assert second.soc_pct < first.soc_pct  # the pack discharged between the polls


FAULTS: dict[Fault, type[SourceError]] = {
    Fault.BAD_CHECKSUM: ChecksumError,
    Fault.TRUNCATED: FramingError,
    Fault.SILENCE: SourceTimeout,
    Fault.SLOW: SourceTimeout,
    Fault.GARBAGE: FramingError,
    Fault.IMPLAUSIBLE: ImplausibleValueError,
}


# these faults end in the driver waiting out TIMEOUT_S (a scaled deadline): slow
WAITS_OUT_THE_TIMEOUT = {Fault.SILENCE, Fault.SLOW}


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=pytest.mark.slow) if f in WAITS_OUT_THE_TIMEOUT else f for f in FAULTS], ids=str
)
def test_fault_gives_typed_error_then_recovers(rig: Rig, fault: Fault) -> None:
    rig.faults.set(fault)
    with pytest.raises(FAULTS[fault]):
        rig.source.poll()
    assert rig.emulator.wait_idle(SLOW_S + scaled(1.0))  # the late reply of a SLOW fault is out (or dropped)
    rig.faults.clear()
    sample = rig.source.poll()
    assert rig.emulator.last_state is not None
    assert_matches(sample, rig.emulator.last_state, rig.resolution)
    assert rig.source.consecutive_failures == 0


def test_garbage_before_the_reply_is_skipped(rig: Rig) -> None:
    rig.faults.set(Fault.GARBAGE_PREFIX)
    sample = rig.source.poll()
    assert rig.emulator.last_state is not None
    assert_matches(sample, rig.emulator.last_state, rig.resolution)


def test_slow_reply_within_the_timeout_is_accepted(rig: Rig) -> None:
    rig.faults.set(Fault.SLOW, slow_delay_s=TIMEOUT_S / 4)
    sample = rig.source.poll()
    assert rig.emulator.last_state is not None
    assert_matches(sample, rig.emulator.last_state, rig.resolution)


def test_close_and_reopen(rig: Rig) -> None:
    rig.source.poll()
    rig.source.close()
    rig.source.close()  # safe twice
    rig.source.open()
    rig.source.poll()


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_retries_inside_one_poll_hide_a_single_bad_reply(name: str) -> None:
    rig, teardown = _open(name, retries=1)
    try:
        rig.faults.set(Fault.BAD_CHECKSUM, count=1)
        sample = rig.source.poll()
        assert rig.faults.injected == 1
        assert rig.source.consecutive_failures == 0
        assert rig.emulator.last_state is not None
        assert_matches(sample, rig.emulator.last_state, rig.resolution)
    finally:
        teardown()


def test_jbd_error_status_is_a_decode_error() -> None:
    rig, teardown = _open("jbd")
    try:
        rig.faults.set(Fault.EXCEPTION)
        with pytest.raises(JbdErrorReply):
            rig.source.poll()
        rig.faults.clear()
        rig.source.poll()
    finally:
        teardown()


def test_daly_current_sign_option() -> None:
    """Firmware that counts discharge as raw > 30000 needs current_sign=-1."""
    rig, teardown = _open("daly", current_sign=-1)
    try:
        wrong = rig.source.poll()
        state = rig.emulator.last_state
        assert state is not None and wrong.current_a == pytest.approx(-state.current_a, abs=0.051)
        rig.source.close()  # the port is opened exclusively
        fixed = create_daly(parse_source_url(f"{rig.emulator.url}?current_sign=-1&timeout={TIMEOUT_S}"), settings())
        fixed.open()
        try:
            assert_matches(fixed.poll(), state, rig.resolution)
        finally:
            fixed.close()
    finally:
        teardown()


def test_configured_cell_count_must_match_the_bms() -> None:
    rig, teardown = _open("jbd", query="&cells=8")
    try:
        with pytest.raises(ImplausibleValueError, match="4 cells"):
            rig.source.poll()
    finally:
        teardown()


def test_registry_builds_the_drivers() -> None:
    with JbdEmulator(make_feed(), FaultControl()) as emulator:
        source = create_source(f"{emulator.url}?timeout={TIMEOUT_S}", settings())
        with source:
            sample = source.poll()
        assert sample.cell_voltages_v is not None and len(sample.cell_voltages_v) == 4


@pytest.mark.parametrize("scheme", sorted(PROTOCOLS))
def test_missing_port_is_unavailable_and_backs_off(scheme: str) -> None:
    source = create_source(f"{scheme}:/dev/battwin-no-such-port?backoff_min_s=60", settings())
    with pytest.raises(SourceUnavailable, match="cannot open"):
        source.open()
    with pytest.raises(SourceUnavailable, match="cannot open"):
        source.poll()  # first reconnect attempt
    with pytest.raises(SourceUnavailable, match="reconnect in"):
        source.poll()  # inside the backoff: fails fast without touching the port
