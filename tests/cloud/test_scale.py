"""The cloud path at fleet scale on the local stack (issue #16 item 5): simulated devices × a simulated day of the
real agent's traffic through the local rules runner, the real ingest handler on moto and the lake's buffered
Firehose stream. The counts a fleet operator pays for are bounded; throughput is measured, never asserted."""

from __future__ import annotations

import json
import math

import pytest

from cloud.cost_model import run_agent
from cloud.local_stack.scale import DEVICE_OFFSET_S, fleet_day, run_scale
from cloud.local_stack.template import firehose_streams, load_template
from schema.messages import telemetry_samples

START = 1_780_000_000.0 - 3 * 86_400  # a fixed past day: the partitions do not depend on when the test runs


def test_the_fleet_is_one_device_day_replayed_as_distinct_things() -> None:
    day = run_agent(2.0, thing="scale-template", start_ts=START)
    fleet = list(fleet_day(day, 3))
    assert len(fleet) == 3 * len(day)
    assert [m[0] for m in fleet] == sorted(m[0] for m in fleet)  # delivered in receive-time order
    envelopes = [json.loads(p) for _at, _t, p in fleet]
    assert len({(e["thing"], e["id"]) for e in envelopes}) == len(fleet)
    assert len({e["id"] for e in envelopes}) == len(fleet)  # ids stay unique across things
    for at, topic, payload in fleet:
        env = json.loads(payload)
        assert topic == f"battwin/{env['thing']}/{env['kind']}" and at == int(env["ts"] * 1000)
        assert env["simulated"] is True
    first = {e["thing"]: e for e in reversed(envelopes) if e["kind"] == "telemetry"}
    a, b = first["scale-00000"], first["scale-00001"]
    assert b["ts"] - a["ts"] == pytest.approx(DEVICE_OFFSET_S)
    assert telemetry_samples(b["body"])[0]["ts"] - telemetry_samples(a["body"])[0]["ts"] == pytest.approx(
        DEVICE_OFFSET_S
    )


@pytest.mark.slow
def test_a_simulated_day_of_a_small_fleet_makes_few_lake_objects_and_bounded_tables() -> None:
    devices, hours = 2, 24.0
    result = run_scale(devices, hours, start_ts=START)
    per_device = run_agent(hours, thing="scale-template", start_ts=START)
    # every message stored once, none dead-lettered; every one a lake record; the ingest Lambda sees every message
    # but telemetry, whose one DynamoDB item the lake transform writes
    assert result.messages == devices * len(per_device)
    telemetry = result.messages_by_kind["telemetry"]
    assert result.outcomes == {"stored": result.messages - telemetry}
    assert result.live_window_items == telemetry > 0
    assert result.dead_letter_objects == 0 and result.lake_error_objects == 0
    assert result.lake_records == result.messages
    # DynamoDB: one History item per message (telemetry's expire after RawTelemetryTtlDays), one DeviceState each
    # (given by the transform: a device's first message is telemetry)
    assert result.history_items == result.messages
    assert result.device_state_items == result.registered_things == devices
    # the lake: per kind, at most one object per 15-minute buffer and day partition of the simulated day
    (spec,) = firehose_streams(load_template()).values()
    flushes = math.ceil(hours * 3600 / spec.buffer_s)
    days = math.ceil(hours / 24) + 1  # the day may straddle a UTC midnight
    assert set(result.lake_objects_by_kind) <= set(result.messages_by_kind)
    for kind, objects in result.lake_objects_by_kind.items():
        assert objects <= min(result.messages_by_kind[kind], flushes + days), kind
    assert result.lake_objects_by_kind["telemetry"] <= result.messages_by_kind["telemetry"] / 20
    assert result.lake_objects < result.messages / 10
    assert result.wall_s > 0  # measured (reported in cloud/README.md), not bounded
