"""One envelope encoder: what the agent publishes is byte for byte what ``messages.encode_envelope`` writes, for
every message kind, so every test that builds device messages with the encoder sends what devices send."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.batcher import TelemetryBatcher
from device_agent.uplink.sizing import telemetry_overhead
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.registry import create_source
from schema.messages import (
    Alarm,
    Body,
    CycleRecord,
    Envelope,
    Health,
    MessageKind,
    Sample,
    Telemetry,
    encode_envelope,
    encode_samples,
    envelope,
)

THING = "pack-7"


def stamp(kind: MessageKind, body: Body) -> float:
    """The envelope time the agent gives each kind: the last sample, the end of the cycle, the estimate, the alarm."""
    if isinstance(body, Telemetry):
        return body.samples[-1].ts
    if isinstance(body, CycleRecord):
        return body.end_ts
    assert isinstance(body, Health | Alarm), kind
    return body.ts


def agent_output(hours: float = 10.0) -> tuple[list[tuple[MessageKind, Body, str]], dict[str, bytes]]:
    """The real agent on the simulator (with a temperature limit the pack exceeds, so it raises an alarm):
    what it handed to the spool (kind, body, id) and the bytes it published, by id."""
    start = time.time() - 10 * 86_400
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "simulator": {"time_acceleration": 1_000_000.0, "start_ts": start}},
        alarms={"max_temperature_c": 20.0},
        shadow={"enabled": False},
    )
    handed: list[tuple[MessageKind, Body, str]] = []

    def on_message(kind: MessageKind, body: object, msg_id: str) -> None:
        assert isinstance(body, Telemetry | CycleRecord | Health | Alarm)
        handed.append((kind, body, msg_id))

    transport = MemoryTransport()
    source = create_source(config.source.url, config.source)
    agent = Agent(config, source, transport, Spool(":memory:"), on_message=on_message)
    agent.run(threading.Event(), max_samples=int(hours * 3600 / config.source.sample_interval_s))
    agent.close()
    published = {json.loads(payload)["id"]: payload for _topic, payload in transport.published}
    return handed, published


@pytest.fixture(scope="module")
def output() -> tuple[list[tuple[MessageKind, Body, str]], dict[str, bytes]]:
    return agent_output()


def test_the_agent_publishes_the_encoders_bytes_for_every_kind(output):
    handed, published = output
    assert {kind for kind, _b, _i in handed} == {"telemetry", "cycles", "health", "alarms"}
    for kind, body, msg_id in handed:
        # the agent's default telemetry encoding is packed (schema.messages.pack_samples)
        expected = encode_envelope(THING, kind, body, stamp(kind, body), msg_id, packed=True)
        assert published[msg_id] == expected, kind
        parsed = Envelope.model_validate_json(expected)
        assert parsed.simulated is True  # the simulator's data is flagged in every envelope
        assert parsed.parsed_body() == body


def test_packed_telemetry_reads_back_the_same_samples_and_is_a_fifth_of_the_size(output):
    handed, published = output
    telemetry = [(body, msg_id) for kind, body, msg_id in handed if kind == "telemetry"]
    assert telemetry
    for body, msg_id in telemetry:
        packed = published[msg_id]
        plain = encode_envelope(THING, "telemetry", body, stamp("telemetry", body), msg_id)
        assert b'"zsamples":' in packed and b'"samples":' not in packed
        assert Envelope.model_validate_json(packed).parsed_body() == body
        if len(body.samples) >= 30:  # a full batch: one 5 KB unit of IoT Core's bill instead of three
            assert len(packed) < len(plain) / 5 and len(packed) < 5 * 1024, (len(packed), len(plain))


def test_a_tiny_batch_stays_plain_when_packing_would_not_make_it_smaller():
    body = Telemetry(samples=(Sample(ts=1.0, voltage_v=3.7, current_a=-1.0, source_id="b"),))
    plain = encode_envelope(THING, "telemetry", body, 1.0, "m1")
    assert encode_envelope(THING, "telemetry", body, 1.0, "m1", packed=True) == plain


def test_the_fast_path_writes_what_the_plain_encoder_writes():
    samples = [
        Sample(ts=1.0, voltage_v=3.7, current_a=-1.0, source_id="bms"),
        Sample(ts=2.0, voltage_v=3.6, current_a=0.5, temperatures_c=(25.5,), soc_pct=40.0, source_id="bms"),
    ]
    batcher = TelemetryBatcher(max_samples=2, max_age_s=60.0)
    assert batcher.add(samples[0]) is None
    batch = batcher.add(samples[1])
    assert batch is not None and batch.samples_json == encode_samples(samples)
    body = Telemetry(samples=tuple(samples))
    fast = encode_envelope(THING, "telemetry", body, 2.0, "m-1", samples_json=batch.samples_json)
    assert fast == encode_envelope(THING, "telemetry", body, 2.0, "m-1")
    assert fast == (
        b'{"v":1,"id":"m-1","thing":"pack-7","kind":"telemetry","ts":2.0,"simulated":false,"body":{"samples":['
        b'{"ts":1.0,"voltage_v":3.7,"current_a":-1.0,"temperatures_c":[],"source_id":"bms","simulated":false},'
        b'{"ts":2.0,"voltage_v":3.6,"current_a":0.5,"temperatures_c":[25.5],"soc_pct":40.0,"source_id":"bms",'
        b'"simulated":false}]}}'
    )


def test_the_simulated_flag_follows_the_body():
    real = Sample(ts=1.0, voltage_v=3.7, current_a=-1.0, source_id="bms")
    fake = real.model_copy(update={"ts": 2.0, "simulated": True})
    assert envelope(THING, "telemetry", Telemetry(samples=(real,)), 1.0).simulated is False
    assert envelope(THING, "telemetry", Telemetry(samples=(real, fake)), 2.0).simulated is True  # any sample
    alarm = Alarm(ts=1.0, code="over_temperature", severity="critical", message="hot", source_id="bms")
    assert envelope(THING, "alarms", alarm, 1.0).simulated is False
    assert envelope(THING, "alarms", alarm.model_copy(update={"simulated": True}), 1.0).simulated is True


def test_a_non_finite_time_stamp_is_refused_not_sent():
    alarm = Alarm(ts=1.0, code="over_temperature", severity="critical", message="hot", source_id="bms")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_envelope(THING, "alarms", alarm, bad, "m-1")


def test_the_batch_budget_counts_the_encoders_envelope():
    """uplink.sizing closes a telemetry batch by the bytes around its samples: exactly what the encoder adds,
    for the longest id and time stamp (so a batch sized to the budget always fits once encoded)."""
    sample = Sample(ts=1.0, voltage_v=3.7, current_a=-1.0, source_id="bms")
    longest = encode_envelope(THING, "telemetry", Telemetry(samples=(sample,)), -1.7976931348623157e308, "x" * 64)
    assert telemetry_overhead(THING) == len(longest) - len(encode_samples([sample])) + 2  # the array's brackets
