"""Unit tests of the shared pieces: stream framing and resync, the request link, backoff, polling,
plausibility limits, URL options, register maps."""

from __future__ import annotations

import pytest

from devkit.bms_emulators.jbd import basic_info_payload, cell_voltages_payload
from hardware.bms.jbd.driver import JbdSource
from hardware.bms.jbd.framing import REG_BASIC_INFO, RESPONSE_SPEC, build_request, build_response
from hardware.bms.options import DriverOptions, make_source_id, parse_common_options
from hardware.bms.plausibility import PlausibilityLimits, check_plausible
from hardware.bms.polling import PolledSource
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
from hardware.modbus.regmap import RegisterMap, decode_field, decode_map, encode_field, load_map, plan_reads
from hardware.registry import parse_source_url
from hardware.transports.backoff import Backoff
from hardware.transports.framing import StreamFramer
from hardware.transports.link import FrameLink
from schema.messages import Sample
from tests.hardware.hw_support import make_feed, settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedPort:
    """A pyserial-like port: each write() queues the scripted reply (as chunks) for the reads."""

    def __init__(self, clock: FakeClock, replies: dict[bytes, list[bytes]] | None = None) -> None:
        self.clock = clock
        self.replies = replies or {}
        self.pending: list[bytes] = []
        self.timeout: float | None = None
        self.writes: list[bytes] = []
        self.fail_write = False

    @property
    def in_waiting(self) -> int:
        return len(self.pending[0]) if self.pending else 0

    def read(self, size: int = 1) -> bytes:
        if not self.pending:
            self.clock.now += self.timeout or 0.1  # a read on a quiet line waits for the timeout
            return b""
        chunk = self.pending.pop(0)
        if len(chunk) > size:
            self.pending.insert(0, chunk[size:])
            chunk = chunk[:size]
        return chunk

    def write(self, data: bytes) -> int:
        if self.fail_write:
            raise OSError(5, "Input/output error")
        self.writes.append(data)
        self.pending = list(self.replies.get(data, []))
        return len(data)

    def reset_input_buffer(self) -> None:
        self.pending = []

    def close(self) -> None:
        pass


STATE = make_feed().state()
BASIC = build_response(REG_BASIC_INFO, basic_info_payload(STATE))
CELLS = build_response(0x04, cell_voltages_payload(STATE))
REQ_BASIC, REQ_CELLS = build_request(0x03), build_request(0x04)


def _link(replies: list[bytes], timeout_s: float = 1.0) -> tuple[FrameLink, ScriptedPort, FakeClock]:
    clock = FakeClock()
    port = ScriptedPort(clock, {REQ_BASIC: replies})
    return FrameLink(port, StreamFramer(RESPONSE_SPEC), timeout_s, gap_s=0.05, clock=clock), port, clock


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64])
def test_link_reassembles_a_reply_arriving_in_pieces(split: int) -> None:
    pieces = [BASIC[i : i + split] for i in range(0, len(BASIC), split)]
    link, port, _ = _link(pieces)
    assert link.request(REQ_BASIC) == BASIC
    assert port.timeout == 0.05


def test_link_skips_garbage_and_frames_for_other_registers() -> None:
    link, _, _ = _link([b"\x00\xdd\x01\x02", CELLS, b"\xff" * 5, BASIC])
    assert link.request(REQ_BASIC, lambda f: f[1] == REG_BASIC_INFO) == BASIC


def test_link_errors() -> None:
    link, _, clock = _link([])
    start = clock.now
    with pytest.raises(SourceTimeout, match="no reply"):
        link.request(REQ_BASIC)
    assert clock.now - start >= 1.0

    bad = bytearray(BASIC)
    bad[-2] ^= 1
    link, _, clock = _link([bytes(bad)])
    start = clock.now
    with pytest.raises(ChecksumError):
        link.request(REQ_BASIC)
    assert clock.now - start < 0.2  # raised after one quiet gap, not after the whole timeout

    link, _, _ = _link([BASIC[:10]])
    with pytest.raises(FramingError, match="truncated"):
        link.request(REQ_BASIC)

    link, _, _ = _link([b"\x01\x02\x03"])
    with pytest.raises(FramingError, match="garbage"):
        link.request(REQ_BASIC)

    link, port, _ = _link([BASIC])
    port.fail_write = True
    with pytest.raises(SourceUnavailable):
        link.request(REQ_BASIC)


def test_framer_resyncs_after_a_false_start_marker() -> None:
    framer = StreamFramer(RESPONSE_SPEC)
    # a DD inside garbage announcing a long frame; the real frame follows inside that span
    framer.feed(b"\xdd\x03\x00\x40" + BASIC)
    assert framer.next_frame() is None  # the false candidate is still incomplete
    assert framer.next_frame(flush=True) == BASIC  # quiet line: drop it, find the real one
    error = framer.best_error()
    assert isinstance(error, FramingError)


def test_framer_buffer_is_bounded() -> None:
    framer = StreamFramer(RESPONSE_SPEC, max_buffer=64)
    framer.feed(b"\x00" * 1000)
    assert framer.buffered <= 64
    framer.next_frame()
    assert framer.buffered == 0 and framer.garbage_bytes == 1000


def test_backoff_doubles_and_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, 4.0, clock)
    assert backoff.remaining() == 0
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.remaining() == 4.0
    clock.now += 4.0
    assert backoff.remaining() == 0
    backoff.succeeded()
    assert backoff.failed() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def _jbd_source(port: ScriptedPort, clock: FakeClock, retries: int = 0) -> JbdSource:
    options = DriverOptions(timeout_s=0.5, gap_s=0.05, retries=retries, backoff_min_s=1.0, backoff_max_s=8.0)
    return JbdSource("jbd:fake", path=None, options=options, port=port, clock=clock)


def test_polled_source_reconnects_with_backoff_after_a_failed_poll() -> None:
    clock = FakeClock()
    port = ScriptedPort(clock)
    source = _jbd_source(port, clock)
    source.open()
    with pytest.raises(SourceTimeout):
        source.poll()
    assert source.consecutive_failures == 1
    writes = len(port.writes)
    with pytest.raises(SourceUnavailable, match="reconnect in"):
        source.poll()  # inside the 1 s backoff: nothing is sent
    assert len(port.writes) == writes
    clock.now += 1.0
    with pytest.raises(SourceTimeout):
        source.poll()  # reconnected, asked again, still silent
    assert source.consecutive_failures == 2
    clock.now += 1.0
    with pytest.raises(SourceUnavailable):
        source.poll()  # the second backoff is 2 s
    clock.now += 1.0
    port.replies = {REQ_BASIC: [BASIC], REQ_CELLS: [CELLS]}
    sample = source.poll()
    assert isinstance(sample, Sample) and source.consecutive_failures == 0
    assert sample.voltage_v == pytest.approx(STATE.voltage_v, abs=0.006)


def test_polled_source_retries_within_one_poll() -> None:
    clock = FakeClock()
    replies = iter([[], [BASIC]])  # first request unanswered, the retry answered

    class FlakyPort(ScriptedPort):
        def write(self, data: bytes) -> int:
            super().write(data)
            if data == REQ_BASIC:
                self.pending = list(next(replies))
            return len(data)

    port = FlakyPort(clock, {REQ_CELLS: [CELLS]})
    source = _jbd_source(port, clock, retries=1)
    source.poll()  # opens lazily
    assert port.writes.count(REQ_BASIC) == 2 and source.consecutive_failures == 0


def test_unexpected_exceptions_do_not_escape_poll() -> None:
    class Broken(PolledSource):
        def _connect(self) -> None:
            pass

        def _disconnect(self) -> None:
            pass

        def _read(self) -> Sample:
            raise ZeroDivisionError("bug")

    source = Broken("x:y", DriverOptions(retries=1, backoff_min_s=0))
    with pytest.raises(SourceError, match="ZeroDivisionError"):
        source.poll()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"voltage_v": 400.0, "current_a": 1.0, "reported_cells": 4}, "outside 4.0..20.0 V"),
        ({"voltage_v": 14.8, "current_a": 2000.0, "reported_cells": 4}, "current"),
        ({"voltage_v": 14.8, "current_a": 1.0, "temperatures_c": [130.0]}, "temperature 1"),
        ({"voltage_v": 14.8, "current_a": 1.0, "soc_pct": 101.0}, "SoC"),
        ({"voltage_v": 14.8, "current_a": 1.0, "cell_voltages_v": [3.7, 3.7, 3.7, 0.2]}, "cell 4"),
        ({"voltage_v": 14.8, "current_a": 1.0, "cell_voltages_v": [3.7] * 3, "reported_cells": 4}, "3 cell"),
        ({"voltage_v": float("nan"), "current_a": 1.0}, "finite"),
        ({"voltage_v": 14.8, "current_a": 1.0, "reported_cells": 0}, "reports 0 cells"),
        ({"voltage_v": -1.0, "current_a": 1.0}, "pack voltage"),
    ],
)
def test_plausibility_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ImplausibleValueError, match=match):
        check_plausible(PlausibilityLimits(), **kwargs)  # type: ignore[arg-type]


def test_plausibility_accepts_a_normal_pack_and_checks_configured_cells() -> None:
    check_plausible(
        PlausibilityLimits(), voltage_v=14.8, current_a=-3.0, temperatures_c=[25.0], soc_pct=50.0,
        cell_voltages_v=[3.7] * 4, reported_cells=4,
    )  # fmt: skip
    with pytest.raises(ImplausibleValueError, match="configured for 8"):
        check_plausible(PlausibilityLimits(cells=8), voltage_v=14.8, current_a=0, reported_cells=4)


def test_url_options() -> None:
    opts = parse_common_options(parse_source_url("jbd:/dev/ttyUSB0?timeout=2&cells=16&max_current_a=200"), settings(3))
    assert opts.timeout_s == 2 and opts.retries == 3 and opts.limits.cells == 16
    assert opts.limits.max_abs_current_a == 200
    for bad in ("timeout=0", "retries=11", "backoff_min_s=5&backoff_max_s=1", "cells=x", "min_temp_c=50&max_temp_c=10"):
        with pytest.raises(SourceConfigError):
            parse_common_options(parse_source_url(f"jbd:/dev/ttyUSB0?{bad}"), settings())
    with pytest.raises(SourceConfigError, match="unknown option"):
        parse_common_options(parse_source_url("jbd:/dev/ttyUSB0?timout=2"), settings())
    assert make_source_id("jbd", "/dev/ttyUSB0") == "jbd:ttyUSB0"
    assert make_source_id("modbus-tcp", "10.0.0.5", 502, "u1") == "modbus-tcp:10.0.0.5:502:u1"
    assert make_source_id("jbd", "/dev/serial/by-id/usb-FTDI x") == "jbd:serial_by-id_usb-FTDI_x"


@pytest.mark.parametrize("type_", ["int16", "uint16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_register_map_round_trip(type_: str, byte_order: str, word_order: str) -> None:
    regmap = RegisterMap.model_validate(
        {
            "byte_order": byte_order,
            "word_order": word_order,
            "fields": {
                "voltage_v": {"address": 0, "type": type_, "scale": 0.01},
                "current_a": {"address": 10, "type": type_, "scale": 0.1, "offset": -100.0},
            },
        }
    )
    for name, value in (("voltage_v", 51.23), ("current_a", -12.3)):
        spec = getattr(regmap.fields, name)
        regs = encode_field(spec, [value], regmap)
        assert len(regs) == spec.size
        assert decode_field(spec, regs, regmap)[0] == pytest.approx(value, abs=1e-4)


def test_register_map_orders_match_telegraf_names() -> None:
    """ABCD / CDAB / BADC / DCBA for the uint32 0x11223344."""
    orders = {
        ("big", "big"): "ABCD",
        ("big", "little"): "CDAB",
        ("little", "big"): "BADC",
        ("little", "little"): "DCBA",
    }
    wire = {"ABCD": [0x1122, 0x3344], "CDAB": [0x3344, 0x1122], "BADC": [0x2211, 0x4433], "DCBA": [0x4433, 0x2211]}
    for (byte_order, word_order), name in orders.items():
        regmap = RegisterMap.model_validate(
            {"fields": {"voltage_v": {"address": 0, "type": "uint32", "byte_order": byte_order,
                                      "word_order": word_order}, "current_a": {"address": 2}}}
        )  # fmt: skip
        assert decode_field(regmap.fields.voltage_v, wire[name], regmap) == [0x11223344], name


def test_shipped_map_and_read_plan() -> None:
    regmap = load_map("generic_pack")
    assert regmap.cells == 4
    blocks = plan_reads(regmap)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        ("holding", 0, 5),
        ("input", 100, 1),
        ("input", 110, 4),
    ]
    assert [(b.address, b.count) for b in plan_reads(regmap, max_gap=10)] == [(0, 5), (100, 14)]
    with pytest.raises(DecodeError, match="needs"):
        decode_map(regmap, {})
    with pytest.raises(SourceConfigError):
        load_map("no_such_map")
