"""Packed telemetry (schema.messages.pack_samples): lossless, refused with a clear error when damaged, expanded
for the lake by the stream's transform Lambda, and split into plain parts when a packed batch is over budget."""

from __future__ import annotations

import base64
import json
import threading
import zlib
from pathlib import Path

import pytest

from cloud.ingest.checks import Rejected, RuleEvent, validate_message
from cloud.lake_expand.handler import expand_record, handler
from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.messages import (
    PACKED_MAX_BYTES,
    Envelope,
    PackedBodyError,
    Sample,
    Telemetry,
    encode_envelope,
    encode_samples,
    pack_samples,
    telemetry_samples,
    unpacked_body,
)
from schema.simulator_settings import SimulatorSettings

SAMPLES = tuple(
    Sample(ts=1.7e9 + k, voltage_v=13.1 + k / 1000, current_a=-2.0, temperatures_c=(25.0,), source_id="bms")
    for k in range(60)
)


def _packed(samples_json: bytes, n: int | None = None) -> dict[str, object]:
    return {"zsamples": base64.b64encode(zlib.compress(samples_json)).decode(), "n": n}


def test_a_packed_body_unpacks_to_exactly_the_samples_sent() -> None:
    body = json.loads(pack_samples(encode_samples(SAMPLES), len(SAMPLES)))
    assert body["n"] == 60
    assert Telemetry.model_validate(unpacked_body(body)).samples == SAMPLES


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"zsamples": "not base64!"}, "not valid base64"),
        ({"zsamples": base64.b64encode(b"plain text").decode()}, "not zlib data"),
        ({"zsamples": base64.b64encode(zlib.compress(b"[1,2")).decode()}, "does not unpack to JSON"),
        ({"zsamples": base64.b64encode(zlib.compress(b'{"a":1}')).decode()}, "not an array of samples"),
        ({"zsamples": base64.b64encode(zlib.compress(b"[]")[:-3]).decode()}, "truncated"),
        ({"zsamples": 42}, "must be a base64 string"),
        ({"zsamples": "", "samples": []}, "unexpected fields: samples"),
        (_packed(b"[{}, {}]", n=3), "n=3 but holds 2 samples"),
    ],
)
def test_a_damaged_packed_body_is_refused_naming_what_is_wrong(body: dict[str, object], says: str) -> None:
    with pytest.raises(PackedBodyError, match=says):
        unpacked_body(body)


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = b"[" + b" " * (PACKED_MAX_BYTES + 10) + b"]"
    with pytest.raises(PackedBodyError, match="more than"):
        unpacked_body(_packed(bomb))


def test_the_ingest_dead_letters_a_damaged_packed_batch_with_the_reason() -> None:
    env = json.loads(encode_envelope("t1", "telemetry", Telemetry(samples=SAMPLES), SAMPLES[-1].ts, "m1", packed=True))
    event = RuleEvent(rule_thing="t1", rule_kind="telemetry")
    _env, body = validate_message(
        json.dumps(env).encode(), event, SAMPLES[-1].ts, max_message_bytes=128 * 1024, max_clock_skew_s=86_400
    )
    assert isinstance(body, Telemetry) and body.samples == SAMPLES
    env["body"]["zsamples"] = env["body"]["zsamples"][:-8]
    with pytest.raises(Rejected) as caught:
        validate_message(
            json.dumps(env).encode(), event, SAMPLES[-1].ts, max_message_bytes=128 * 1024, max_clock_skew_s=86_400
        )
    assert caught.value.reason == "invalid_body" and "zsamples" in caught.value.detail
    assert caught.value.msg_id == "m1"


def _lake_record(packed: bool) -> bytes:
    payload = encode_envelope("t1", "telemetry", Telemetry(samples=SAMPLES), SAMPLES[-1].ts, "m1", packed=packed)
    record = {**json.loads(payload), "rule_thing": "t1", "rule_kind": "telemetry", "rule_received_ms": 1}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def test_the_lake_transform_expands_packed_batches_and_passes_everything_else_on() -> None:
    packed, plain = _lake_record(True), _lake_record(False)
    out = expand_record(packed)
    assert out.endswith(b"\n") and json.loads(out) == json.loads(plain)
    assert expand_record(plain) is plain  # already plain: untouched
    for other in (b"not json\n", b'{"kind":"cycles","body":{"zsamples":"x"}}\n', b"[1]\n"):
        assert expand_record(other) is other
    damaged = json.loads(packed)
    damaged["body"]["zsamples"] = "!!"
    raw = json.dumps(damaged).encode() + b"\n"
    assert expand_record(raw) is raw  # kept as sent (the ingest dead-letters that message)
    # Firehose's transformation call and answer
    event = {
        "records": [{"recordId": "r1", "data": base64.b64encode(packed).decode()}, {"recordId": "r2", "data": "@@"}]
    }
    answer = handler(event)["records"]
    assert [(r["recordId"], r["result"]) for r in answer] == [("r1", "Ok"), ("r2", "Ok")]
    assert json.loads(base64.b64decode(answer[0]["data"])) == json.loads(plain) and answer[1]["data"] == "@@"


def test_a_packed_batch_over_the_budget_is_split_into_plain_parts_that_fit(tmp_path: Path, monkeypatch) -> None:
    # the batcher lets a packed batch hold PACKED_BUDGET_FACTOR times the plain budget; with a factor far above what
    # these readings compress by, packed batches come out over the budget and must be split
    monkeypatch.setattr("device_agent.agent.PACKED_BUDGET_FACTOR", 50)
    budget = 1_000
    settings = SimulatorSettings(seed=3, time_acceleration=1e6, start_ts=1.7e9, cells_series=16)
    config = AgentConfig(
        thing_name="pack-1",
        source={"url": "simulator", "sample_interval_s": 1.0, "simulator": settings.model_dump()},
        tracker={"cells_series": 16},
        spool={"path": tmp_path / "spool.db"},
    )
    transport = MemoryTransport(max_payload=budget)
    agent = Agent(config, SimulatorSource(settings, interval_s=1.0), transport, Spool(tmp_path / "spool.db"))
    try:
        agent.run(threading.Event(), max_samples=600)
        agent.shutdown(5)
    finally:
        agent.close()
    payloads = [p for t, p in transport.published if t.endswith("/telemetry")]
    assert max(len(p) for p in payloads) <= budget
    samples = [s for p in payloads for s in telemetry_samples(json.loads(p)["body"])]
    assert len(samples) == 600 and [s["ts"] for s in samples] == sorted(s["ts"] for s in samples)
    assert all(b'"samples"' in p for p in payloads)  # every batch came out over the budget: split, plain
    assert all(Envelope.model_validate_json(p).parsed_body() for p in payloads)
