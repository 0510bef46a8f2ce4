"""Telemetry's path without the ingest Lambda: the template's telemetry rule feeds only the lake stream, whose real
transform (cloud/lake_expand) expands the packed batch for the lake, writes the batch's live-window item to
History (one write unit, not in the by-time index), registers a thing first heard from by telemetry in
DeviceState, and dead-letters a telemetry message that fails the ingest's checks. The API and the silence check
read the live window; all of it on a moto server with the template's tables."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloud.api.handler import Api
from cloud.aws import marshal, unmarshal
from cloud.cost_model import dynamodb_item_bytes
from cloud.lake_expand.handler import LakeTransform, TransformSettings, transform_event
from cloud.live_window import newest_live_item
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.iot_sql import Message, RuleQuery
from cloud.local_stack.rules import firehose_record
from cloud.local_stack.template import load_template, topic_rules
from cloud.silence.handler import SilenceCheck, SilenceSettings
from cloud.tables import history_pk
from schema.messages import CycleRecord, Sample, Telemetry, encode_envelope
from tests.cloud.cloud_support import collected_emf, rule_event

NOW = float(int(time.time()))


@pytest.fixture(scope="module")
def local() -> Iterator[LocalAws]:
    with LocalAws.running() as aws:
        yield aws


def batch(thing: str, ts: float, n: int = 60, source: str = "jbd:ttyUSB0") -> bytes:
    samples = tuple(
        Sample(
            ts=ts - n + k + 1,
            voltage_v=13.2 + 0.001 * k,
            current_a=-4.5,
            temperatures_c=(24.5, 25.0),
            soc_pct=71.0,
            cell_voltages_v=(3.301, 3.302, 3.299, 3.3),
            source_id=source,
        )
        for k in range(n)
    )
    return encode_envelope(thing, "telemetry", Telemetry(samples=samples), ts, packed=True)


def record(topic: str, payload: bytes, received: float) -> bytes:
    """The record the template's rules put to the lake stream for a message on ``topic`` (the local runner's SQL)."""
    msg = Message(topic, payload, int(received * 1000))
    (rule,) = [r for r in topic_rules(load_template()) if r.firehose and RuleQuery(r.sql).matches(topic)]
    return firehose_record(rule, RuleQuery(rule.sql).evaluate(msg))


def state(local: LocalAws, thing: str) -> dict[str, Any]:
    got = local.client("dynamodb").get_item(
        TableName=local.names.device_state_table, Key={"thing": {"S": thing}}, ConsistentRead=True
    )
    return unmarshal(got.get("Item", {}))


def history(local: LocalAws, thing: str, kind: str) -> list[dict[str, Any]]:
    got = local.client("dynamodb").query(
        TableName=local.names.history_table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": history_pk(thing, kind)}},
    )
    return list(got["Items"])


def test_the_telemetry_rule_invokes_no_lambda_and_feeds_the_lake_stream() -> None:
    rules = [
        r for r in topic_rules(load_template()) if not r.disabled and RuleQuery(r.sql).matches("battwin/x/telemetry")
    ]
    assert rules and all(r.function is None for r in rules)
    assert [r.firehose for r in rules] == ["LakeFirehose"]


def test_a_batch_gives_one_small_live_item_and_the_thing_its_device_state(local: LocalAws) -> None:
    transform = local.lake_transform()
    thing = "lw-new-1"
    assert state(local, thing) == {}
    sent = [batch(thing, NOW - 120), batch(thing, NOW - 60)]
    recs = [record(f"battwin/{thing}/telemetry", p, NOW - 60 + i) for i, p in enumerate(sent)]
    out = transform.records(recs)
    # the lake gets the plain rows, in order
    assert [len(json.loads(r)["body"]["samples"]) for r in out] == [60, 60]
    items = history(local, thing, "telemetry")
    assert len(items) == 2 and transform.live_written == 2
    for item in items:
        assert dynamodb_item_bytes(item) <= 1024  # one write unit
        assert "thing" not in item  # not in the by-time index: no second write unit
        assert int(item["expires_at"]["N"]) > NOW  # TTL'd
    # the thing was unknown: it now has its DeviceState item (the fleet list scans that table)
    st = state(local, thing)
    assert (st["last_kind"], st["last_seen"], st["first_seen"]) == ("telemetry", NOW - 60, NOW - 60)
    assert transform.registered == 1
    # a later batch does not write DeviceState again (only reads whether the thing is there)
    later = record(f"battwin/{thing}/telemetry", batch(thing, NOW), NOW)
    transform.records([later])
    assert transform.registered == 1 and state(local, thing)["last_seen"] == NOW - 60
    assert len(history(local, thing, "telemetry")) == 3
    # the same batch again (a redelivery): the same item, not another
    transform.records([later])
    assert len(history(local, thing, "telemetry")) == 3


def test_firehose_event_format_round_trip(local: LocalAws) -> None:
    thing = "lw-event-1"
    rec = record(f"battwin/{thing}/telemetry", batch(thing, NOW), NOW)
    garbage = b"\xff\xfe not json"
    event = {
        "records": [
            {"recordId": "a", "data": base64.b64encode(rec).decode()},
            {"recordId": "b", "data": base64.b64encode(garbage).decode()},
            {"recordId": "c", "data": "%%% not base64"},
        ]
    }
    got = transform_event(local.lake_transform(), event)["records"]
    assert [(r["recordId"], r["result"]) for r in got] == [("a", "Ok"), ("b", "Ok"), ("c", "Ok")]
    assert len(json.loads(base64.b64decode(got[0]["data"]))["body"]["samples"]) == 60
    assert base64.b64decode(got[1]["data"]) == garbage and got[2]["data"] == "%%% not base64"
    assert newest_live_item(local.client("dynamodb"), local.names.history_table, thing) is not None


def test_bad_telemetry_is_dead_lettered_with_the_reason_and_still_reaches_the_lake(local: LocalAws) -> None:
    transform = local.lake_transform()
    thing = "lw-bad-1"
    good = json.loads(batch(thing, NOW))
    damaged = {**good, "body": {**good["body"], "zsamples": "AAAA" + good["body"]["zsamples"][4:]}}
    other_thing = batch("lw-someone-else", NOW)  # published on lw-bad-1's topic
    cases = {
        "invalid_body": json.dumps(damaged).encode(),
        "thing_mismatch": other_thing,
    }
    s3 = local.client("s3")
    for reason, payload in cases.items():
        rec = record(f"battwin/{thing}/telemetry", payload, NOW)
        (out,) = transform.records([rec])
        assert json.loads(out)["id"] == json.loads(payload)["id"]  # passed on: the partition query decides
        keys = [
            o["Key"]
            for o in s3.list_objects_v2(Bucket=local.names.bucket, Prefix=f"dead-letter/reason={reason}/").get(
                "Contents", []
            )
        ]
        letters = [json.loads(s3.get_object(Bucket=local.names.bucket, Key=k)["Body"].read()) for k in keys]
        mine = [d for d in letters if d["message_id"] == json.loads(payload)["id"]]
        assert len(mine) == 1 and mine[0]["reason"] == reason and mine[0]["detail"], reason
        assert mine[0]["topic_thing"] == thing
    assert history(local, thing, "telemetry") == [] and transform.dead_letters == 2
    assert state(local, thing) == {}  # nothing valid was heard from it


def test_a_dynamodb_failure_loses_no_lake_record(local: LocalAws, caplog: pytest.LogCaptureFixture) -> None:
    broken = LakeTransform(
        TransformSettings(history_table="no-such-table", bucket=local.names.bucket),
        dynamodb=local.client("dynamodb"),
        s3=local.client("s3"),
    )
    thing = "lw-broken-1"
    recs = [record(f"battwin/{thing}/telemetry", batch(thing, NOW - k), NOW) for k in (60, 0)]
    with collected_emf() as metrics, caplog.at_level(logging.ERROR, logger="battwin.cloud.lake_expand"):
        out = broken.records(recs)
    assert [json.loads(r)["id"] for r in out] == [json.loads(r)["id"] for r in recs]
    assert all("samples" in json.loads(r)["body"] for r in out)
    assert any("live-window items not written" in r.getMessage() for r in caplog.records)
    # counted as the metric the template's alarm watches
    alarm = load_template()["Resources"]["LiveWindowFailuresAlarm"]["Properties"]
    assert [m[alarm["MetricName"]] for m in metrics if alarm["MetricName"] in m] == [2]


def test_the_api_shows_the_latest_sample_from_the_live_window(local: LocalAws) -> None:
    thing = "lw-api-1"
    ingestor = local.ingestor()
    cycle = CycleRecord(
        index=3,
        kind="discharge",
        start_ts=NOW - 4000,
        end_ts=NOW - 600,
        duration_s=3400,
        charge_ah=1.9,
        energy_wh=25.0,
        capacity_ah=1.9,
        complete=True,
        start_voltage_v=14.4,
        end_voltage_v=12.0,
        min_voltage_v=12.0,
        max_voltage_v=14.4,
        mean_current_a=-2.0,
        n_samples=3400,
        source_id="jbd:ttyUSB0",
    )
    payload = encode_envelope(thing, "cycles", cycle, NOW - 600)
    assert ingestor.handle(rule_event(f"battwin/{thing}/cycles", payload, int((NOW - 599) * 1000))).status == "stored"
    local.lake_transform().records([record(f"battwin/{thing}/telemetry", batch(thing, NOW - 30, source="jbd:x"), NOW)])
    api = Api(local.names.device_state_table, local.names.history_table, dynamodb=local.client("dynamodb"))
    detail = json.loads(api.handle({"httpMethod": "GET", "path": f"/devices/{thing}"})["body"])
    assert detail["last_kind"] == "telemetry" and detail["last_seen"] == NOW - 30
    assert detail["voltage_v"] == pytest.approx(13.2 + 0.059) and detail["source_id"] == "jbd:x"
    assert detail["latest_sample"]["ts"] == NOW - 30 and detail["last_cycle"]["index"] == 3
    # a thing heard from by telemetry alone is in the fleet list
    other = "lw-api-2"
    local.lake_transform().records([record(f"battwin/{other}/telemetry", batch(other, NOW - 10), NOW)])
    listed: dict[str, Any] = {}
    token = None
    while True:
        path = {"httpMethod": "GET", "path": "/devices", "queryStringParameters": {"next": token} if token else None}
        page = json.loads(api.handle(path)["body"])
        listed.update({d["thing"]: d for d in page["items"]})
        token = page["next"]
        if not token:
            break
    assert listed[other]["last_kind"] == "telemetry" and listed[other]["soc_pct"] == 71.0
    assert listed[thing]["voltage_v"] == pytest.approx(13.259)


def test_telemetry_alone_keeps_a_device_from_being_called_silent_and_ends_its_episode(local: LocalAws) -> None:
    thing = "lw-quiet-1"
    ddb = local.client("dynamodb")
    # heard from (DeviceState) long ago, then called silent
    ddb.put_item(
        TableName=local.names.device_state_table,
        Item=marshal({"thing": thing, "last_heard": NOW - 5000, "silent_since": NOW - 5000, "last_seen": NOW - 5000}),
    )

    def check(now: float, with_history: bool = True) -> list[str]:
        settings = SilenceSettings(
            device_state_table=local.names.device_state_table,
            history_table=local.names.history_table if with_history else None,
            silence_after_s=900.0,
        )
        return [t for t in SilenceCheck(settings, dynamodb=ddb).run(now).silent if t == thing]

    assert check(NOW) == [thing]
    local.lake_transform().records([record(f"battwin/{thing}/telemetry", batch(thing, NOW - 100), NOW - 100)])
    assert check(NOW, with_history=False) == [thing]  # DeviceState alone would still call it silent
    assert check(NOW) == []  # its telemetry says otherwise
    assert "silent_since" not in state(local, thing)  # and the episode ended
    assert check(NOW + 2000) == [thing]  # silent again later: a new episode


def test_the_transform_takes_the_ingests_clock_skew_override(local: LocalAws) -> None:
    """A batch stamped two days ahead (an accelerated demo clock) is dead-lettered for its clock by the template's
    transform and stored by one given the demo's skew, as the ingest handler is (cloud/local_stack/demo.py)."""
    thing = "lw-clock-1"
    rec = record(f"battwin/{thing}/telemetry", batch(thing, NOW + 2 * 86_400.0), NOW)
    strict = local.lake_transform()
    strict.records([rec])
    assert (strict.dead_letters, strict.live_written) == (1, 0)
    demo = local.lake_transform(max_clock_skew_s=10 * 365.25 * 86_400.0)
    demo.records([rec])
    assert (demo.dead_letters, demo.live_written) == (0, 1)
    assert newest_live_item(local.client("dynamodb"), local.names.history_table, thing) is not None
