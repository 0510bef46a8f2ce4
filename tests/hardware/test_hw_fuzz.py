"""Property-based fuzzing: random or mutated bytes never raise anything but ProtocolError subclasses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.bms.daly import decode as daly
from hardware.bms.daly.framing import SPEC as DALY_SPEC
from hardware.bms.daly.framing import build_frame as daly_frame
from hardware.bms.jbd import decode as jbd
from hardware.bms.jbd.framing import REQUEST_SPEC as JBD_REQUEST_SPEC
from hardware.bms.jbd.framing import RESPONSE_SPEC as JBD_SPEC
from hardware.bms.jbd.framing import build_response
from hardware.bms.jk import decode as jk
from hardware.bms.jk.framing import SPEC as JK_SPEC
from hardware.bms.jk.framing import TYPE_RESPONSE
from hardware.bms.jk.framing import build_frame as jk_frame
from hardware.decode_cli import decode_frames
from hardware.errors import ProtocolError
from hardware.modbus.regmap import RegisterField, RegisterMap, decode_field
from hardware.modbus.sunspec import MODEL_802_SIZE, decode_model_802
from hardware.sbs.registers import decode_register, decode_transaction
from hardware.transports.framing import FrameSpec, StreamFramer

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECS: dict[str, FrameSpec] = {"jbd": JBD_SPEC, "jbd-request": JBD_REQUEST_SPEC, "daly": DALY_SPEC, "jk": JK_SPEC}

FRAME_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "jbd": jbd.decode_response,
    "jbd-request": jbd.decode_request,
    "daly": daly.decode_frame,
    "jk": jk.decode_frame,
    "jk-request": jk.decode_request,
    "sbs": decode_transaction,
}


def only_protocol_errors(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(ProtocolError):
        fn()


@pytest.mark.parametrize("name", sorted(SPECS))
@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(1, 64), max_size=20))
def test_stream_framer_never_raises(name: str, data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(SPECS[name])
    i = 0
    for size in [*cuts, len(data)]:
        framer.feed(data[i : i + size])
        i += size
        while framer.next_frame() is not None:
            pass
    while framer.next_frame(flush=True) is not None:
        pass
    assert framer.buffered == 0
    error = framer.best_error()
    assert error is None or isinstance(error, ProtocolError)


@pytest.mark.parametrize("name", sorted(SPECS))
@FUZZ
@given(data=st.binary(max_size=400))
def test_parse_exact_only_protocol_errors(name: str, data: bytes) -> None:
    only_protocol_errors(lambda: SPECS[name].parse_exact(data))


@pytest.mark.parametrize("name", sorted(FRAME_DECODERS))
@FUZZ
@given(data=st.binary(max_size=400))
def test_frame_decoders_only_protocol_errors(name: str, data: bytes) -> None:
    only_protocol_errors(lambda: FRAME_DECODERS[name](data))


@FUZZ
@given(register=st.integers(0, 255), data=st.binary(max_size=255), status=st.sampled_from([0, 0, 0, 0x80]))
def test_jbd_valid_frames_with_random_payload(register: int, data: bytes, status: int) -> None:
    """Frames that pass framing and checksum but carry nonsense reach the payload decoders."""
    only_protocol_errors(lambda: jbd.decode_response(build_response(register, data, status)))
    only_protocol_errors(lambda: jbd.decode_payload(register, data))


@FUZZ
@given(data_id=st.integers(0, 255), data=st.binary(min_size=8, max_size=8), sign=st.sampled_from([1, -1]))
def test_daly_valid_frames_with_random_payload(data_id: int, data: bytes, sign: int) -> None:
    only_protocol_errors(lambda: daly.decode_frame(daly_frame(1, data_id, data), sign))
    only_protocol_errors(lambda: daly.decode_payload(data_id, data, sign))


TLV_TAGS = st.sampled_from(sorted(jk.TAG_LENGTHS))


@st.composite
def tlv_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed TLV bodies (known tags, right lengths) with random values and some damage."""
    out = bytearray()
    if draw(st.booleans()):
        n = draw(st.integers(0, 30))
        out += bytes([jk.TAG_CELLS, draw(st.sampled_from([3 * n, 3 * n + 1]))]) + draw(
            st.binary(min_size=3 * n, max_size=3 * n)
        )
    for tag in draw(st.lists(TLV_TAGS, max_size=40)):
        out += bytes([tag]) + draw(st.binary(min_size=jk.TAG_LENGTHS[tag], max_size=jk.TAG_LENGTHS[tag]))
    if draw(st.booleans()):
        out += draw(st.binary(max_size=6))
    return bytes(out)


@FUZZ
@given(body=tlv_bodies())
def test_jk_tlv_bodies_only_protocol_errors(body: bytes) -> None:
    only_protocol_errors(lambda: jk.decode_status_payload(body))
    only_protocol_errors(lambda: jk.decode_frame(jk_frame(0x06, body, source=0, transport_type=TYPE_RESPONSE)))


@FUZZ
@given(register=st.integers(0, 255), word=st.integers(-5, 0x10005), energy=st.booleans())
def test_sbs_register_decoding(register: int, word: int, energy: bool) -> None:
    only_protocol_errors(lambda: decode_register(register, word, energy))


@FUZZ_SMALL
@given(regs=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=MODEL_802_SIZE + 4), fix_header=st.booleans())
def test_sunspec_802_random_registers(regs: list[int], fix_header: bool) -> None:
    if fix_header and len(regs) >= 2:
        regs[0], regs[1] = 802, 62
    only_protocol_errors(lambda: decode_model_802(regs))


@FUZZ_SMALL
@given(
    type_=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
    count=st.integers(1, 4),
    regs=st.lists(st.integers(0, 0xFFFF), max_size=10),
    byte_order=st.sampled_from(["big", "little"]),
    word_order=st.sampled_from(["big", "little"]),
)
def test_register_map_field_decoding(type_: str, count: int, regs: list[int], byte_order: str, word_order: str) -> None:
    spec = RegisterField.model_validate({"address": 0, "type": type_, "count": count})
    regmap = RegisterMap.model_validate(
        {
            "byte_order": byte_order,
            "word_order": word_order,
            "fields": {"voltage_v": {"address": 0}, "current_a": {"address": 1}},
        }
    )
    only_protocol_errors(lambda: decode_field(spec, regs, regmap))


@FUZZ_SMALL
@given(
    protocol=st.sampled_from(["jbd", "daly", "jk", "sbs", "sunspec802"]),
    frames=st.lists(st.binary(max_size=140).map(bytes.hex), min_size=1, max_size=4),
)
def test_decode_cli_never_raises(protocol: str, frames: list[str]) -> None:
    results = decode_frames(protocol, frames)
    assert results
    assert all(isinstance(r, dict) for r in results)


CORPUS_FRAMES = [
    bytes.fromhex("dd03001d0618000001f201f400002c7c00000000000080640304030b8b0b8a0b84fa8d77"),
    bytes.fromhex("dd0400080f450f3d0f370f3dfec677"),
    bytes.fromhex("a5019008021400007545037889"),
]


@FUZZ
@given(
    index=st.integers(0, len(CORPUS_FRAMES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_mutated_real_frames(index: int, flips: list[tuple[int, int]]) -> None:
    frame = bytearray(CORPUS_FRAMES[index])
    for pos, mask in flips:
        frame[pos % len(frame)] ^= mask
    decoder = daly.decode_frame if frame[0] == 0xA5 else jbd.decode_response
    only_protocol_errors(lambda: decoder(bytes(frame)))
