"""Basic Ingest end to end: the real agent publishing ``$aws/rules/<prefix>_<kind>/battwin/<thing>/<kind>`` over a
real mosquitto → the local rules runner (the template's rules, Basic Ingest routing) → the real ingest handler on
moto and the lake's Firehose stream; beside it a plain-topic publish, and a payload that is not JSON."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.lake import decode_jsonl
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.rules import LocalRulesRunner
from device_agent.agent import Agent
from device_agent.config import AgentConfig, MqttSettings
from device_agent.uplink.mqtt_transport import MqttTransport
from hardware.simulator.source import SimulatorSource
from schema.messages import Alarm, encode_envelope
from schema.simulator_settings import SimulatorSettings
from tests.conftest import Mosquitto
from tests.dashboard.conftest import wait_for

KINDS = ("telemetry", "cycles", "health", "alarms")


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    with LocalAws.running() as local:
        yield local


def _agent(url: str, tmp_path: Path, thing: str) -> tuple[Agent, Counter[str]]:
    settings = SimulatorSettings(seed=11, time_acceleration=1e6, ageing_factor=10.0, start_ts=1.7e9)
    config = AgentConfig(
        thing_name=thing,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": settings.model_dump()},
        mqtt={"url": url, "basic_ingest_rule_prefix": "battwin", "reconnect_min_s": 0.2, "publish_timeout_s": 5.0},
        tracker={"cells_series": settings.cells_series},
        telemetry={"batch_max_samples": 250, "batch_max_age_s": 86_400.0},
        alarms={"max_temperature_c": 20.0},  # the simulated cell sits above it: an over_temperature alarm
        spool={"path": tmp_path / f"{thing}.db"},
        shadow={"enabled": False},
    )
    accepted: Counter[str] = Counter()
    agent = Agent(
        config,
        SimulatorSource(settings, interval_s=10.0),
        MqttTransport(config.mqtt, client_id=thing),
        on_message=lambda kind, _body, _id: accepted.update([kind]),
    )
    return agent, accepted


def _items(aws: LocalAws, table: str, thing: str) -> list[dict[str, Any]]:
    """The thing's items: by ``thing`` (DeviceState) or by the History key ``<thing>#<kind>`` (telemetry's
    live-window items carry no ``thing``: they are not in the by-time index)."""
    ddb = aws.client("dynamodb")
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):
        items += [
            i
            for i in page["Items"]
            if i.get("thing", {}).get("S") == thing or i.get("pk", {}).get("S", "").rsplit("#", 1)[0] == thing
        ]
    return items


@pytest.mark.slow
def test_agent_through_basic_ingest_reaches_dynamodb_and_the_lake_one_rule_per_message(
    aws: LocalAws, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ingestor = aws.ingestor()
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def ingest(event: dict[str, Any]) -> dict[str, Any]:
        out = ingestor.handle(event).as_dict()
        with lock:
            outcomes.append(out)
        return out

    s3 = aws.client("s3")

    def error_sink(key: str, body: bytes) -> None:  # the rules' S3 error action, as the demo stack wires it
        s3.put_object(Bucket=aws.names.bucket, Key=key, Body=body, ContentType="application/json")

    runner = LocalRulesRunner(
        mosquitto.url, {"IngestFunction": ingest, **aws.firehose_targets()}, error_sink=error_sink
    ).start()
    thing = "bi-agent-1"
    agent, accepted = _agent(mosquitto.url, tmp_path, thing)
    assert agent.topic("health") == f"$aws/rules/battwin_health/battwin/{thing}/health"
    plain = MqttTransport(MqttSettings(url=mosquitto.url), client_id="bi-plain-pub")
    plain.start()
    try:
        agent.run(threading.Event(), max_samples=5_000)  # ≈ 14 simulated hours: cycles, health, an alarm
        assert agent.spool.pending == 0, "the agent stopped with unsent messages"
        sent = sum(accepted.values())
        assert set(accepted) == set(KINDS), accepted
        # (b) a plain topic still works, for a device that does not use Basic Ingest
        assert plain.wait_connected(10)
        now = time.time()
        alarm = Alarm(ts=now - 5, code="over_temperature", severity="warning", message="hot", source_id="x")
        plain.publish("battwin/bi-plain-1/alarms", encode_envelope("bi-plain-1", "alarms", alarm, now - 5)).result(10)
        # (c) a payload that is not JSON on a Basic Ingest topic: the rule's SELECT * fails -> its error action
        plain.publish(f"$aws/rules/battwin_health/battwin/{thing}/health", b"\x00 not json").result(10)
        # the ingest Lambda sees every message but telemetry (its rule feeds only the lake, whose transform stores it)
        small = sent - accepted["telemetry"]
        wait_for(lambda: len(outcomes) >= small + 1, 120, 0.2, "every cycles/health/alarm message ingested")
        wait_for(lambda: runner.stats().get("rule_errors", 0) >= 1, 30, 0.1, "the rule error")
        assert runner.wait_idle(60)
    finally:
        plain.stop()
        runner.stop()
    stats = runner.stats()
    # each Basic Ingest message triggered exactly one rule, its kind's; the plain one its kind's rule too
    assert stats["basic_ingest"] == sent + 1
    assert stats["rules_triggered"] == sent + 2
    for kind in KINDS:
        rule = f"triggered:{kind.capitalize()}Rule"
        assert stats[rule] == accepted[kind] + (kind == "alarms") + (kind == "health"), kind
    assert stats["firehose_records"] == sent + 1 and stats["rule_errors"] == 1
    assert "rule_not_found" not in stats
    # stored as with plain topics: DeviceState, one History item per message (the ingest's, and telemetry's
    # live-window items from the lake transform)
    mine = [o for o in outcomes if o.get("thing") == thing]
    assert Counter(o["status"] for o in mine) == Counter({"stored": small})
    history = _items(aws, aws.names.history_table, thing)
    assert Counter(i["kind"]["S"] for i in history) == accepted
    (state,) = _items(aws, aws.names.device_state_table, thing)
    assert "health" in state and "last_cycle" in state
    assert _items(aws, aws.names.device_state_table, "bi-plain-1"), "the plain-topic alarm reached DeviceState"
    # the lake: every message once, with the topic's thing and kind as the rule saw them (no $aws/rules prefix)
    records: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.names.bucket, Prefix="lake/"):
        for obj in page.get("Contents", []):
            records += list(decode_jsonl(s3.get_object(Bucket=aws.names.bucket, Key=obj["Key"])["Body"].read()))
    ours = [r for r in records if r.get("thing") == thing]
    assert Counter(r["kind"] for r in ours) == accepted
    assert all((r["rule_thing"], r["rule_kind"]) == (thing, r["kind"]) for r in ours)
    # (c) the dead letter: under the topic the rule saw, with the reason and the payload
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=aws.names.bucket, Prefix="dead-letter/rule-errors/").get("Contents", [])
    ]
    (key,) = [k for k in keys if k.startswith(f"dead-letter/rule-errors/battwin/{thing}/health/")]
    letter = json.loads(s3.get_object(Bucket=aws.names.bucket, Key=key)["Body"].read())
    assert letter["ruleName"] == "HealthRule" and letter["topic"] == f"battwin/{thing}/health"
    assert letter["failures"] == [{"errorMessage": "SELECT * needs a JSON payload"}]
    assert base64.b64decode(letter["payload_b64"]) == b"\x00 not json"
