# ruff: noqa: E402  (the imports below need aiobmsble: they follow the Python and package checks)
"""The ``ble:`` source through aiobmsble, against a fake Bluetooth LE world (devkit.bms_emulators.ble).

The frames the fake packs send come from the project's JBD emulator (JBD's BLE service carries its UART frames)
for the physics simulator's pack, or are real JK BLE captures (shared/bms-frames) replayed as recorded;
aiobmsble's own decoders parse them. Then: the typed errors the serial drivers give (timeout, garbage, a link
lost mid-poll, a pack out of range), reconnecting with backoff, and the agent's ``source_offline`` alarm.

aiobmsble needs Python >= 3.12: on 3.11 this module is skipped (``make pyversions`` runs it on 3.12 and 3.13);
on 3.12+ a missing aiobmsble is a skip on a developer's machine and a failure under CI=true.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 12):
    pytest.skip(
        "BLE sources need Python >= 3.12 (aiobmsble); `make pyversions` runs these tests on 3.12 and 3.13",
        allow_module_level=True,
    )

from tests.support import require_module

require_module("aiobmsble", reason="aiobmsble is not installed (pip install 'battwin[ble]')")

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from devkit.bms_emulators.ble import (
    CapturePeer,
    FakeCharacteristic,
    FakeRadio,
    FakeService,
    JbdBlePeer,
    PeerFault,
    full_uuid,
)
from hardware.ble.source import BleSource, create, supported_families
from hardware.errors import FramingError, SourceConfigError, SourceTimeout, SourceUnavailable
from schema.messages import telemetry_samples
from schema.source_settings import SourceSettings, parse_source_url
from tests.hardware.hw_support import CORPUS_DIR, Resolution, assert_matches, make_feed, require_corpus

JBD_ADDRESS = "A4:C1:38:00:00:01"
JK_ADDRESS = "C8:47:8C:00:00:01"
#: JBD's units on the wire (10 mV, 10 mA, 1 %, 1 mV, 0.1 K) plus rounding
JBD_RES = Resolution(voltage_v=0.011, current_a=0.011, soc_pct=1.0, cell_v=0.0011, temperature_c=0.11)
#: fast failure handling for the tests: short poll timeout, short backoff
FAST = "timeout=0.5&backoff_min_s=0.05&backoff_max_s=0.2"


@pytest.fixture
def radio() -> Iterator[FakeRadio]:
    with FakeRadio().patch_aiobmsble() as fake:
        yield fake


def ble_source(radio: FakeRadio, url: str, retries: int = 0) -> BleSource:
    return create(parse_source_url(url), SourceSettings(retries=retries), finder=radio)


def poll_until(source: BleSource, deadline_s: float = 30.0) -> Any:
    """Poll until a sample comes (the backoff refuses early reconnects with SourceUnavailable)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return source.poll()
        except SourceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# -- decoding: JBD frames from the emulator ---------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        f"ble:{JBD_ADDRESS}?type=jbd",
        f"ble:{JBD_ADDRESS.lower()}",  # type=auto: aiobmsble's matchers pick JBD from the advertisement
        "ble:name=JBD-SP04S034-L4S?type=xiaoxiang",
        "ble:?name=JBD-*&type=auto",
    ],
)
def test_jbd_pack_over_ble_reads_the_simulated_pack(radio: FakeRadio, url: str) -> None:
    feed = make_feed(seed=7)
    radio.add(JbdBlePeer(JBD_ADDRESS, feed))
    source = ble_source(radio, f"{url}{'&' if '?' in url else '?'}{FAST}")
    try:
        state = feed.state()
        sample = source.poll()
        assert source.family == "aiobmsble.bms.jbd_bms"
        assert_matches(sample, state, JBD_RES)
        assert state.current_a < -0.1 and sample.current_a < 0, "a discharge must read negative (battwin convention)"
        assert not sample.simulated and sample.source_id.startswith("ble:")
        # the pack moves on; the next poll follows it over the same connection
        state = feed.advance(900.0)
        assert_matches(source.poll(), state, JBD_RES)
        assert radio.peers[JBD_ADDRESS].connects == 1
    finally:
        source.close()


def test_a_charging_pack_reads_positive_current(radio: FakeRadio) -> None:
    feed = make_feed(seed=8, discharge=False)
    radio.add(JbdBlePeer(JBD_ADDRESS, feed))
    state = feed.state()
    for _ in range(200):  # the simulator's cycle: find its charge phase
        if state.current_a > 0.1:
            break
        state = feed.advance(300.0)
    assert state.current_a > 0.1, "the simulated pack never charged"
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&{FAST}")
    try:
        sample = source.poll()
        assert_matches(sample, state, JBD_RES)
        assert sample.current_a > 0
    finally:
        source.close()


def _jbd_auth_capture() -> tuple[bytes, bytes]:
    """A real JBD password exchange (btsnoop, esphome-jbd-bms): the app's FF AA 15 request with "000000" and the
    pack's answer (status 0x00: accepted)."""
    request = response = None
    path = CORPUS_DIR / "jbd.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        rec = json.loads(line)
        if rec["protocol"] == "jbd_ffaa_auth" and rec["register_or_id"] == "0x15":
            if rec["direction"] == "request" and request is None:
                request = bytes.fromhex(rec["hex"])
            elif rec["direction"] == "response" and response is None:
                response = bytes.fromhex(rec["hex"])
    if request is None or response is None:
        require_corpus()
        pytest.fail("no JBD 0x15 password exchange in the frame corpus")
    return request, response


def test_a_jbd_pack_with_a_bluetooth_password(radio: FakeRadio) -> None:
    request, response = _jbd_auth_capture()
    assert request[4:-1] == b"000000"  # the password the capture carries
    feed = make_feed(seed=17)
    peer = radio.add(JbdBlePeer(JBD_ADDRESS, feed, auth=(request, response)))
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&secret=000000&{FAST}")
    try:
        assert_matches(source.poll(), feed.state(), JBD_RES)
        assert peer.requests[0] == request  # aiobmsble sent the exchange byte for byte as the vendor app did
    finally:
        source.close()
    wrong = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&secret=123456&connect_timeout=1&{FAST}")
    try:
        with pytest.raises(SourceUnavailable, match="no connection to"):  # this pack does not answer a wrong one
            wrong.poll()
    finally:
        wrong.close()


# -- decoding: real JK BLE captures ------------------------------------------------------------------------
#: JK sends its "ready" message after the device info; this is the frame mpp-solar recorded for it
JK_READY = bytes.fromhex("aa5590ebc8010100000000000000000000000044")


def _jk_capture_pairs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(source file, device-info record, cell-info record) from one capture, where both carry expected values."""
    path = CORPUS_DIR / "jk.jsonl"
    if not path.is_file():
        return []
    by_file: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["protocol"] == "jk_ble" and rec["direction"] == "response" and rec.get("expected"):
            by_file[rec["source"]["path"]][rec["register_or_id"]] = rec
    return [(Path(f).stem, r["0x03"], r["0x02"]) for f, r in sorted(by_file.items()) if {"0x03", "0x02"} <= set(r)]


JK_PAIRS = _jk_capture_pairs()


def _jk_peer(info: bytes, cells: bytes) -> CapturePeer:
    # JK's BLE module: service ffe0, one characteristic ffe1 for notify and write. It sends with a large MTU, so
    # the ready message arrives in the same notification as the end of the device info (aiobmsble handles both).
    # The advertisement (JK's manufacturer id 0x0B65) is made up for aiobmsble's matcher; the frames are captures.
    char = FakeCharacteristic(full_uuid("ffe1"), 0x10, ["read", "notify", "write-without-response", "write"])
    return CapturePeer(
        JK_ADDRESS,
        "JK-B2A24S15P",
        [FakeService(full_uuid("ffe0"), 0x0E, [char])],
        [(lambda req: req[4] == 0x97, info + JK_READY), (lambda req: req[4] == 0x96, cells)],
        manufacturer_data={0x0B65: bytes(6)},
        chunk=128,
    )


def test_the_jk_capture_set_is_there() -> None:
    require_corpus()
    assert len(JK_PAIRS) >= 3, [p[0] for p in JK_PAIRS]


@pytest.mark.parametrize(("name", "info", "cells"), JK_PAIRS, ids=[p[0] for p in JK_PAIRS])
def test_real_jk_captures_decode_to_their_recorded_values(
    radio: FakeRadio, name: str, info: dict[str, Any], cells: dict[str, Any]
) -> None:
    radio.add(_jk_peer(bytes.fromhex(info["hex"]), bytes.fromhex(cells["hex"])))
    source = ble_source(radio, f"ble:{JK_ADDRESS}?{FAST}&timeout=5")  # type=auto
    try:
        sample = source.poll()
    finally:
        source.close()
    want = cells["expected"]
    assert source.family == "aiobmsble.bms.jikong_bms"
    assert sample.voltage_v == pytest.approx(want["pack_voltage_v"], abs=0.001)
    assert sample.current_a == pytest.approx(want["current_a"], abs=0.001)  # negative = discharging, as recorded
    assert sample.soc_pct == pytest.approx(want["soc_pct"])
    assert sample.cell_voltages_v is not None and len(sample.cell_voltages_v) == want["cell_count"]
    assert min(sample.cell_voltages_v) == pytest.approx(want["min_cell_voltage_v"], abs=0.0005)
    assert max(sample.cell_voltages_v) == pytest.approx(want["max_cell_voltage_v"], abs=0.0005)
    # the battery sensors as recorded; the MOSFET sensor is not a battery temperature and is left out
    assert list(sample.temperatures_c[: len(want["temperatures_c"])]) == pytest.approx(want["temperatures_c"])
    mosfet = want["mosfet_temperature_c"]
    assert all(t != pytest.approx(mosfet) for t in sample.temperatures_c) or mosfet in want["temperatures_c"]


# -- failures: typed errors, like the serial drivers ------------------------------------------------------
@pytest.fixture
def jbd(radio: FakeRadio) -> Iterator[tuple[JbdBlePeer, BleSource]]:
    peer = radio.add(JbdBlePeer(JBD_ADDRESS, make_feed(seed=9)))
    assert isinstance(peer, JbdBlePeer)
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&{FAST}")
    source.poll()  # connected and reading
    yield peer, source
    source.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (PeerFault.SILENT, SourceTimeout),
        (PeerFault.GARBAGE, FramingError),
        (PeerFault.BAD_CHECKSUM, FramingError),
    ],
)
def test_no_reply_and_bad_replies_give_typed_errors_then_recover(
    jbd: tuple[JbdBlePeer, BleSource], fault: PeerFault, error: type[Exception]
) -> None:
    peer, source = jbd
    peer.fault = fault
    with pytest.raises(error) as info:
        source.poll()
    assert type(info.value) is error, info.value
    assert source.consecutive_failures == 1
    peer.fault = PeerFault.NONE
    sample = poll_until(source)  # reconnects after the backoff delay, then reads again
    assert_matches(sample, peer.feed.state(), JBD_RES)
    assert source.consecutive_failures == 0
    assert peer.connects == 2


@pytest.mark.parametrize("fault", [PeerFault.DROP, PeerFault.DROP_STALL])
def test_a_link_lost_mid_poll_is_unavailable_not_a_timeout(radio: FakeRadio, fault: PeerFault) -> None:
    peer = radio.add(JbdBlePeer(JBD_ADDRESS, make_feed(seed=10)))
    # a long poll timeout: the lost link must fail the poll by itself, not by running out the clock
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&timeout=120&backoff_min_s=0.05&backoff_max_s=0.2")
    try:
        source.poll()
        sent = len(peer.requests)
        peer.fault = fault
        # DROP: aiobmsble's own retry finds the link gone (or the watch does, whichever is first); DROP_STALL: the
        # retry hangs, so only the link watch can end the poll before the timeout, and its message says so
        match = "dropped during the poll" if fault is PeerFault.DROP else "dropped during the poll \\(seen while"
        with pytest.raises(SourceUnavailable, match=match):
            source.poll()
        assert len(peer.requests) == sent + 1, "the request was sent before the link went down"
        peer.fault = PeerFault.NONE
        poll_until(source)
        assert peer.connects == 2
    finally:
        source.close()


def test_a_pack_out_of_range_is_unavailable_backs_off_and_comes_back(radio: FakeRadio) -> None:
    feed = make_feed(seed=11)
    radio.add(JbdBlePeer(JBD_ADDRESS, feed))
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&timeout=0.5&backoff_min_s=0.05&backoff_max_s=0.1")
    try:
        source.poll()
        radio.set_in_range(JBD_ADDRESS, False)
        with pytest.raises(SourceUnavailable, match="link is down"):
            source.poll()
        with pytest.raises(SourceUnavailable, match="reconnect in"):  # within the backoff: refused at once
            source.poll()
        # the reconnects that follow: the known device first, then a new scan, which does not see it
        messages: list[str] = []
        deadline = time.monotonic() + 30.0
        while not any("not seen in a" in m for m in messages) and time.monotonic() < deadline:
            with pytest.raises(SourceUnavailable) as info:
                source.poll()
            messages.append(str(info.value))
            time.sleep(0.02)
        assert any("connecting to" in m and "failed" in m for m in messages), messages
        assert any("not seen in a" in m for m in messages), messages
        assert radio.scans >= 2
        radio.set_in_range(JBD_ADDRESS, True)
        assert_matches(poll_until(source), feed.state(), JBD_RES)
        assert source.consecutive_failures == 0
    finally:
        source.close()


def test_a_failing_bluetooth_stack_is_unavailable_not_a_crash(radio: FakeRadio) -> None:
    from bleak.exc import BleakDBusError

    radio.add(JbdBlePeer(JBD_ADDRESS, make_feed(seed=15)))
    radio.scan_error = BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", ["not allowed to talk to org.bluez"])
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&{FAST}")
    try:
        with pytest.raises(SourceUnavailable, match="AccessDenied"):
            source.poll()
        radio.scan_error = None
        assert poll_until(source).voltage_v > 0
    finally:
        source.close()


def test_a_connection_that_never_completes_is_unavailable(radio: FakeRadio) -> None:
    peer = radio.add(JbdBlePeer(JBD_ADDRESS, make_feed(seed=16)))
    peer.connect_hangs = True
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jbd&connect_timeout=0.3&{FAST}")
    try:
        with pytest.raises(SourceUnavailable, match="no connection to .* within 0.3 s"):
            source.poll()
        peer.connect_hangs = False
        assert poll_until(source).voltage_v > 0
    finally:
        source.close()


def test_an_unknown_advertisement_asks_for_a_type(radio: FakeRadio) -> None:
    # not a JBD name, and an address outside JBD's OUIs: aiobmsble's matchers cannot tell
    radio.add(JbdBlePeer("02:00:00:00:00:01", make_feed(seed=12), local_name="MyPack"))
    source = ble_source(radio, f"ble:name=MyPack?{FAST}")
    try:
        with pytest.raises(SourceUnavailable, match="matches no aiobmsble family; set type="):
            source.poll()
    finally:
        source.close()
    explicit = ble_source(radio, f"ble:name=MyPack?type=jbd&{FAST}")
    try:
        assert explicit.poll().voltage_v > 0
    finally:
        explicit.close()


def test_a_wrong_type_reads_nothing_and_says_so(radio: FakeRadio) -> None:
    radio.add(JbdBlePeer(JBD_ADDRESS, make_feed(seed=13)))
    source = ble_source(radio, f"ble:{JBD_ADDRESS}?type=jk&{FAST}")  # JK on a JBD pack: no such service
    try:
        with pytest.raises(SourceUnavailable):
            source.poll()
    finally:
        source.close()


def test_unknown_family_and_bad_secret_are_config_errors(radio: FakeRadio) -> None:
    with pytest.raises(SourceConfigError, match="not an aiobmsble family; known: auto, .*jbd"):
        ble_source(radio, f"ble:{JBD_ADDRESS}?type=nosuchbms")
    with pytest.raises(SourceConfigError, match="takes no secret"):
        ble_source(radio, f"ble:{JBD_ADDRESS}?type=daly&secret=1234")
    families = supported_families()
    assert {"jbd", "jikong", "daly"} <= set(families) and len(families) >= 40
    assert "dummy" not in families  # aiobmsble's own test plug-in is no BMS


# -- the agent: source_offline after N failed polls, cleared when the pack is back ------------------------
def _wait(pred: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def _published(transport: MemoryTransport, kind: str) -> list[dict[str, Any]]:
    return [json.loads(p)["body"] for t, p in list(transport.published) if t.endswith("/" + kind)]


def _samples(transport: MemoryTransport) -> list[dict[str, Any]]:
    return [s for b in _published(transport, "telemetry") for s in telemetry_samples(b)]


def _offline(transport: MemoryTransport, active: bool) -> bool:
    return any(a["code"] == "source_offline" and a["active"] is active for a in _published(transport, "alarms"))


@pytest.mark.slow
@pytest.mark.every_python  # BLE runs on 3.12+ only: make pyversions is the only run that has it
def test_the_agent_raises_source_offline_and_recovers_when_the_pack_returns(radio: FakeRadio, tmp_path: Path) -> None:
    feed = make_feed(seed=14)
    radio.add(JbdBlePeer(JBD_ADDRESS, feed))
    url = f"ble:{JBD_ADDRESS}?type=jbd&cells=4&{FAST}"
    cfg = AgentConfig(
        thing_name="ble-pack-1",
        source={"url": url, "sample_interval_s": 0.05, "offline_after_failures": 3, "retries": 0},
        telemetry={"batch_max_samples": 1},
        shadow={"enabled": False},
    )
    transport = MemoryTransport()
    source = create(parse_source_url(url), cfg.source, finder=radio)
    agent = Agent(cfg, source, transport, Spool(tmp_path / "s.db"))
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,))
    worker.start()
    try:
        assert _wait(lambda: len(_samples(transport)) >= 5), "no samples from the BLE pack"
        assert not _offline(transport, True)
        radio.set_in_range(JBD_ADDRESS, False)
        assert _wait(lambda: _offline(transport, True)), "no source_offline alarm"
        n_at_alarm = len(_samples(transport))
        assert agent.stats.poll_failures >= 3
        radio.set_in_range(JBD_ADDRESS, True)
        assert _wait(lambda: _offline(transport, False)), "source_offline was not cleared"
        assert _wait(lambda: len(_samples(transport)) >= n_at_alarm + 5)
    finally:
        stop.set()
        worker.join(20)
    assert not worker.is_alive()
    assert all(not s["simulated"] and s["source_id"] == f"ble:{JBD_ADDRESS}" for s in _samples(transport))
    assert all(4 * 2.5 <= s["voltage_v"] <= 4 * 4.3 for s in _samples(transport))
