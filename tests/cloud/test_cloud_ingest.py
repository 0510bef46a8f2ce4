"""The ingest Lambda's handler, in-process, against the tables, bucket and Glue tables created on moto, fed with
the envelopes the real agent publishes."""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud.aws import marshal
from cloud.cost_model import dynamodb_item_bytes
from cloud.ingest.handler import handler
from cloud.lake import decode_jsonl, parse_partition, utc_day
from cloud.live_window import (
    LIVE_BODY_MAX_BYTES,
    LIVE_FIELDS,
    LIVE_WINDOW_SAMPLES,
    latest_sample,
    live_item,
    live_window,
    newest_live_item,
)
from cloud.tables import history_pk, history_sk
from schema.messages import Alarm, Envelope, Sample, Telemetry, encode_envelope, telemetry_samples, unpacked_body
from tests.cloud.cloud_support import rule_event
from tests.cloud.conftest import FLEET_START


def _items(aws: dict[str, Any], table: str, pk: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": pk}},
    }
    while True:
        page = aws["dynamodb"].query(**kwargs)
        out += page["Items"]
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _keys(aws: dict[str, Any], bucket: str, prefix: str) -> list[str]:
    pages = aws["s3"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def _state(aws: dict[str, Any], env: dict[str, str], thing: str) -> dict[str, Any]:
    from cloud.aws import unmarshal

    item = aws["dynamodb"].get_item(TableName=env["DEVICE_STATE_TABLE"], Key={"thing": {"S": thing}})["Item"]
    return unmarshal(item)


def test_every_message_is_stored_once(
    aws: dict[str, Any], ingested: dict[str, Any], lambda_env: dict[str, dict[str, str]]
) -> None:
    env = lambda_env["ingest"]
    envelopes = [Envelope.model_validate_json(p) for _t, p in ingested["messages"]]
    # the ingest Lambda stores every cycles, health and alarm message; telemetry is the lake transform's
    small = sum(1 for e in envelopes if e.kind != "telemetry")
    assert Counter(o["status"] for o in ingested["outcomes"]) == {"stored": small}
    tel_count = sum(1 for e in envelopes if e.kind == "telemetry")
    assert ingested["transform"].live_written == tel_count > 0 and ingested["transform"].dead_letters == 0
    by_key = Counter((e.thing, e.kind) for e in envelopes)
    for (thing, kind), n in by_key.items():
        items = _items(aws, env["HISTORY_TABLE"], history_pk(thing, kind))
        assert len(items) == n, (thing, kind)
        for item in items:
            assert ("expires_at" in item) == (kind == "telemetry")
    # telemetry: a compact live window (a few samples of the batch, the live chart's fields), one write unit,
    # expiring RAW_TTL_DAYS (the stack parameter: 2 here) after the message time, written by the lake stream's
    # transform; not in the by-time index (no ``thing``: no second write unit); the full batch goes to the lake
    tel = next(e for e in envelopes if e.kind == "telemetry")
    item = aws["dynamodb"].get_item(
        TableName=env["HISTORY_TABLE"],
        Key={"pk": {"S": history_pk(tel.thing, "telemetry")}, "sk": {"S": history_sk(tel.ts, tel.id)}},
    )["Item"]
    assert int(item["expires_at"]["N"]) == int(tel.ts + 2 * 86_400)
    samples = Telemetry.model_validate(unpacked_body(tel.body)).samples
    window = json.loads(item["body"]["S"])
    assert window["of"] == len(samples) == int(item["n_samples"]["N"]) > LIVE_WINDOW_SAMPLES
    # six samples, or fewer once battwin's SoC is in them: the body stays within LIVE_BODY_MAX_BYTES
    assert len(window["samples"]) == (LIVE_WINDOW_SAMPLES if "soc_est_pct" not in window["samples"][-1] else 5)
    assert len(item["body"]["S"].encode()) <= LIVE_BODY_MAX_BYTES
    last = samples[-1].model_dump(mode="json", exclude_none=True)
    assert window["samples"][-1] == {k: v for k, v in last.items() if k in LIVE_FIELDS}
    assert {"ts", "voltage_v", "current_a", "temperatures_c"} <= set(window["samples"][0]) <= set(LIVE_FIELDS)
    assert dynamodb_item_bytes(item) <= 1024  # one write unit
    assert "thing" not in item and window["source_id"] == samples[-1].source_id
    # the lake (fed by the rules' Firehose records, not by the ingest): every message in its kind's partition
    # of its day, once; few objects, one per partition and buffer, not one per message (the moto server is shared
    # by the session: other tests' objects may sit in the lake beside these)
    keys = [k for k in _keys(aws, env["DATA_BUCKET"], "lake/") if "/battwin-lake-1-" in k]
    records: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        part = parse_partition(key)
        assert key.endswith(".gz")
        for rec in decode_jsonl(aws["s3"].get_object(Bucket=env["DATA_BUCKET"], Key=key)["Body"].read()):
            assert part == {"kind": rec["kind"], "dt": utc_day(rec["ts"])}
            records.setdefault(part["kind"], []).append(rec)
    assert {"telemetry", "cycles", "health"} <= set(records)
    for kind in {e.kind for e in envelopes}:
        sent = {(e.thing, e.id) for e in envelopes if e.kind == kind}
        stored = [(r["thing"], r["id"]) for r in records[kind] if r["thing"] in ("bt-a", "bt-b")]
        assert sorted(stored) == sorted(sent), kind
    days = {(e.kind, utc_day(e.ts)) for e in envelopes}
    assert ingested["lake_objects"] == len(days) < len(envelopes) / 10
    cyc = next(e for e in envelopes if e.kind == "cycles")
    (rec,) = [r for r in records["cycles"] if r["id"] == cyc.id]
    assert rec["body"] == cyc.body and (rec["rule_thing"], rec["rule_kind"]) == ("bt-a", "cycles")


@pytest.mark.slow
@pytest.mark.every_python  # the ingest handler runs on the Lambda runtime's python3.13
def test_a_message_delivered_twice_is_stored_once(
    aws: dict[str, Any], ingested: dict[str, Any], lambda_env: dict[str, dict[str, str]], use_env: Any
) -> None:
    env = use_env("ingest")
    before_items = len(_items(aws, env["HISTORY_TABLE"], history_pk("bt-a", "telemetry")))
    before_keys = len(_keys(aws, env["DATA_BUCKET"], "lake/"))
    again = list(ingested["messages"])
    random.Random(7).shuffle(again)
    outcomes = [handler(rule_event(t, p)) for t, p in again[:60]]
    assert {o["status"] for o in outcomes} == {"duplicate"}
    # the other event shape (SELECT *, topic(2) AS rule_thing ...) is recognised as the same message
    topic, payload = next((t, p) for t, p in ingested["messages"] if t.endswith("/health"))
    inline = {**json.loads(payload), "rule_thing": topic.split("/")[1], "rule_kind": "health"}
    assert handler(inline)["status"] == "duplicate"
    assert len(_items(aws, env["HISTORY_TABLE"], history_pk("bt-a", "telemetry"))) == before_items
    assert len(_keys(aws, env["DATA_BUCKET"], "lake/")) == before_keys


def test_device_state_holds_the_latest(
    aws: dict[str, Any], ingested: dict[str, Any], lambda_env: dict[str, dict[str, str]]
) -> None:
    env = lambda_env["ingest"]
    envelopes = [Envelope.model_validate_json(p) for _t, p in ingested["messages"]]
    for thing in ("bt-a", "bt-b"):
        mine = [e for e in envelopes if e.thing == thing]
        state = _state(aws, env, thing)
        stored = [e for e in mine if e.kind != "telemetry"]
        assert state["last_seen"] == pytest.approx(max(e.ts for e in stored))
        assert state["first_seen"] == pytest.approx(min(e.ts for e in stored))
        last_health = max((e for e in mine if e.kind == "health"), key=lambda e: e.ts)
        assert state["health"] == last_health.body  # exact: floats round-trip through DynamoDB numbers
        last_cycle = max((e for e in mine if e.kind == "cycles"), key=lambda e: e.ts)
        assert state["last_cycle"]["index"] == last_cycle.body["index"]
    # telemetry does not touch DeviceState: the API takes the latest sample from the newest live-window item
    tel = max((e for e in envelopes if e.thing == "bt-a" and e.kind == "telemetry"), key=lambda e: e.ts)
    assert "latest_sample" not in _state(aws, env, "bt-a")
    live = newest_live_item(aws["dynamodb"], env["HISTORY_TABLE"], "bt-a")
    assert live is not None and live["id"] == tel.id
    last = telemetry_samples(tel.body)[-1]
    assert latest_sample(live) == {k: v for k, v in last.items() if k in (*LIVE_FIELDS, "source_id")}
    # alarms the agent raised on bt-b are in the state, the newest per code
    alarms = [e for e in envelopes if e.thing == "bt-b" and e.kind == "alarms"]
    state_alarms = _state(aws, env, "bt-b").get("alarms", {})
    for code in {a.body["code"] for a in alarms}:
        newest = max((a for a in alarms if a.body["code"] == code), key=lambda a: a.ts)
        assert state_alarms[code]["active"] == newest.body["active"]


def test_alarms_open_close_and_ignore_late_arrivals(aws: dict[str, Any], use_env: Any) -> None:
    env = use_env("ingest")
    t0 = FLEET_START + 5000.0

    def alarm(ts: float, active: bool) -> tuple[str, bytes]:
        body = Alarm(
            ts=ts,
            code="over_temperature",
            severity="critical",
            active=active,
            message="cell above 60 °C" if active else "cleared",
            details={"temperature_c": 63.5},
            source_id="simulator:9",
        )
        return "battwin/bt-c/alarms", encode_envelope("bt-c", "alarms", body, ts=ts)

    assert handler(rule_event(*alarm(t0, True)))["status"] == "stored"
    assert _state(aws, env, "bt-c")["alarms"]["over_temperature"]["active"] is True
    assert handler(rule_event(*alarm(t0 + 60, False)))["status"] == "stored"
    assert _state(aws, env, "bt-c")["alarms"]["over_temperature"]["active"] is False
    # an older raise that arrives late is stored in the history but does not reopen the alarm
    assert handler(rule_event(*alarm(t0 + 30, True)))["status"] == "stored"
    state = _state(aws, env, "bt-c")
    assert state["alarms"]["over_temperature"]["active"] is False
    assert state["alarms"]["over_temperature"]["ts"] == pytest.approx(t0 + 60)
    assert len(_items(aws, env["HISTORY_TABLE"], history_pk("bt-c", "alarms"))) == 3


def _good(thing: str = "bt-d", ts: float | None = None) -> dict[str, Any]:
    ts = FLEET_START + 100.0 if ts is None else ts
    sample = Sample(
        ts=ts, voltage_v=13.1, current_a=-1.0, temperatures_c=(25.0,), source_id="simulator:4", simulated=True
    )
    msg_id = f"dl-{random.Random(ts).getrandbits(40):x}"
    good: dict[str, Any] = json.loads(encode_envelope(thing, "telemetry", Telemetry(samples=(sample,)), ts, msg_id))
    return good


def _dump(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


MALFORMED: list[tuple[str, str, Any]] = [
    ("not_json", "battwin/bt-d/telemetry", b"\x00\x01 not json \xff"),
    ("not_json", "battwin/bt-d/telemetry", b'[{"v": 1}]'),
    ("invalid_envelope", "battwin/bt-d/telemetry", {k: v for k, v in _good().items() if k != "id"}),
    ("invalid_envelope", "battwin/bt-d/telemetry", {**_good(), "v": 2}),
    (
        "invalid_body",
        "battwin/bt-d/telemetry",
        {**_good(), "body": {"samples": [{"ts": 1.0, "voltage_v": 5000.0, "current_a": 0.0, "source_id": "s"}]}},
    ),
    (
        "invalid_body",
        "battwin/bt-d/telemetry",
        b'{"v":1,"id":"nan-1","thing":"bt-d","kind":"telemetry","ts":1.0,'
        b'"simulated":false,"body":{"samples":[{"ts":1.0,"voltage_v":NaN,'
        b'"current_a":0.0,"source_id":"s"}]}}',
    ),
    ("thing_mismatch", "battwin/bt-e/telemetry", _good("bt-d")),
    ("kind_mismatch", "battwin/bt-d/cycles", _good("bt-d")),
    ("clock_skew", "battwin/bt-d/telemetry", _good("bt-d", ts=time.time() + 10 * 86_400)),
]


@pytest.mark.parametrize(
    ("reason", "topic", "payload"), MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)]
)
def test_malformed_messages_go_to_the_dead_letter_prefix(
    aws: dict[str, Any], use_env: Any, reason: str, topic: str, payload: Any
) -> None:
    env = use_env("ingest")
    raw = payload if isinstance(payload, bytes) else _dump(payload)
    out = handler(rule_event(topic, raw))
    assert out["status"] == "dead_letter" and out["reason"] == reason
    assert out["key"].startswith(f"dead-letter/reason={reason}/dt=")
    record = json.loads(aws["s3"].get_object(Bucket=env["DATA_BUCKET"], Key=out["key"])["Body"].read())
    assert record["reason"] == reason and record["detail"]
    assert record["topic"] == topic and record["size_bytes"] == len(raw)
    stored = record["payload"].encode() if record["payload"] is not None else base64.b64decode(record["payload_b64"])
    assert stored == raw  # the original bytes are kept
    assert not _items(aws, env["HISTORY_TABLE"], history_pk("bt-d", "telemetry"))


def test_oversized_and_undecodable_events(aws: dict[str, Any], use_env: Any) -> None:
    env = use_env("ingest", MAX_MESSAGE_BYTES="2048")
    big = {**_good(), "body": {"samples": [_good()["body"]["samples"][0]] * 40}}
    out = handler(rule_event("battwin/bt-d/telemetry", _dump(big)))
    assert out["status"] == "dead_letter" and out["reason"] == "oversized"
    record = json.loads(aws["s3"].get_object(Bucket=env["DATA_BUCKET"], Key=out["key"])["Body"].read())
    assert "> limit 2048" in record["detail"] and record["size_bytes"] > 2048
    bad = {**rule_event("battwin/bt-d/telemetry", b"{}"), "payload_b64": "%%% not base64 %%%"}
    assert handler(bad)["reason"] == "bad_event"
    assert handler({"payload_b64": 5, "rule_thing": "x"})["reason"] == "bad_event"


def test_a_failure_midway_is_completed_by_the_retry(
    aws: dict[str, Any], use_env: Any, device_b_records: list[tuple[str, bytes]]
) -> None:
    """DynamoDB fails midway: the invocation raises (Lambda retries it), nothing is in the History yet, and the
    retry completes the message; the ingest never writes the lake (the rule's Firehose record does)."""
    topic, payload = next((t, p) for t, p in device_b_records if t.endswith("/health"))
    msg = Envelope.model_validate_json(payload)
    payload = payload.replace(msg.thing.encode(), b"bt-f")
    topic = topic.replace(msg.thing, "bt-f")
    event = rule_event(topic, payload)
    hist_key = {"pk": {"S": history_pk("bt-f", "health")}, "sk": {"S": history_sk(msg.ts, msg.id)}}
    env = use_env("ingest", DEVICE_STATE_TABLE="battwin-no-such-table")
    lake_before = set(_keys(aws, env["DATA_BUCKET"], "lake/"))
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        handler(event)
    assert "Item" not in aws["dynamodb"].get_item(TableName=env["HISTORY_TABLE"], Key=hist_key)
    env = use_env("ingest")
    assert handler(event)["status"] == "stored"
    assert "Item" in aws["dynamodb"].get_item(TableName=env["HISTORY_TABLE"], Key=hist_key)
    assert _state(aws, env, "bt-f")["health_ts"] == msg.ts
    assert handler(event)["status"] == "duplicate"
    assert set(_keys(aws, env["DATA_BUCKET"], "lake/")) == lake_before


def test_no_glue_partition_is_created_per_message(
    aws: dict[str, Any], ingested: dict[str, Any], lambda_env: dict[str, dict[str, str]]
) -> None:
    """The lake's tables use partition projection: storing a day of messages registers no partition (and the
    ingest has neither the setting nor the permission to)."""
    assert "GLUE_DATABASE" not in lambda_env["ingest"]
    for kind in ("telemetry", "cycles", "health", "alarms"):
        assert aws["glue"].get_partitions(DatabaseName="battwin_lake", TableName=kind)["Partitions"] == []


def test_the_live_window_keeps_one_write_unit_with_battwins_soc_in_every_sample() -> None:
    def sample(i: int, soc_est: float | None) -> Sample:
        return Sample(
            ts=1_796_641_671.645 + i * 1.013,
            voltage_v=16.123,
            current_a=-1.234,
            temperatures_c=[25.3, 26.4, 27.1, 24.9],
            soc_pct=55.5,
            soc_est_pct=soc_est,
            cell_voltages_v=[4.031] * 4,
            source_id="jbd:ttyUSB0",
        )

    thing = "t" * 32
    for soc_est, kept in ((None, LIVE_WINDOW_SAMPLES), (54.3, 5)):
        window = live_window(Telemetry(samples=tuple(sample(i, soc_est) for i in range(40))))
        assert len(window["samples"]) == kept and window["of"] == 40
        assert window["samples"][-1]["ts"] == pytest.approx(1_796_641_671.645 + 39 * 1.013)  # the last is kept
        assert ("soc_est_pct" in window["samples"][0]) == (soc_est is not None)
        body = Telemetry(samples=tuple(sample(i, soc_est) for i in range(40)))
        env = Envelope(
            id="0" * 32, thing=thing, kind="telemetry", ts=1796641711.152, simulated=False, body={"samples": []}
        )
        item = marshal(live_item(env, body, 1796641712.0, 2.0))
        assert "thing" not in item and json.loads(item["body"]["S"]) == window
        assert dynamodb_item_bytes(item) <= 1024, soc_est
