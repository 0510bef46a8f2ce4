"""The local IoT rules runner: the template's rule SQL evaluated like IoT Core, and delivery to the ingest handler."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloud.ingest.handler import Ingestor, IngestSettings
from cloud.lake import utc_day
from cloud.live_window import latest_sample, newest_live_item
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.iot_sql import Message, RuleEvaluationError, RuleQuery, RuleSqlError, topic_matches
from cloud.local_stack.rules import LocalRulesRunner
from cloud.local_stack.template import load_template, max_retry_attempts, table_request, topic_rules
from device_agent.config import MqttSettings
from device_agent.uplink.mqtt_transport import MqttTransport
from devkit.broker.embedded import EmbeddedBroker
from schema.messages import Alarm, Sample, Telemetry, encode_envelope, telemetry_samples
from tests.dashboard.conftest import wait_for

RULE_SQL = (
    "SELECT encode(*, 'base64') AS payload_b64, topic() AS rule_topic, topic(2) AS rule_thing, "
    "topic(3) AS rule_kind, timestamp() AS rule_received_ms, clientid() AS rule_client_id "
    "FROM 'battwin/+/telemetry'"
)


def _telemetry_payload(thing: str, ts: float, n: int = 3) -> bytes:
    samples = tuple(
        Sample(
            ts=ts + k, voltage_v=14.8, current_a=-1.0, temperatures_c=(25.0,), source_id="simulator:x", simulated=True
        )
        for k in range(n)
    )
    return encode_envelope(thing, "telemetry", Telemetry(samples=samples), ts + n)


# -- the SQL ---------------------------------------------------------------------------------------


def test_template_rules_are_the_ones_the_runner_mirrors() -> None:
    rules = topic_rules(load_template())
    assert {r.logical_id for r in rules} == {"TelemetryRule", "CyclesRule", "HealthRule", "AlarmsRule", "PresenceRule"}
    for rule in rules:
        q = RuleQuery(rule.sql)
        assert rule.error_key == "dead-letter/rule-errors/${topic()}/${newuuid()}.json"
        # telemetry invokes no Lambda per message (the lake stream's transform writes its live window)
        assert rule.function == (None if rule.logical_id == "TelemetryRule" else "IngestFunction")
        if rule.logical_id == "PresenceRule":  # IoT lifecycle events, handed to the ingest as they are
            assert q.topic_filter == "$aws/events/presence/+/+"
            event = b'{"clientId":"t-1","eventType":"disconnected","timestamp":1700000000123}'
            assert q.evaluate(Message("$aws/events/presence/disconnected/t-1", event, 1)) == json.loads(event)
            continue
        # one rule per kind (a Basic Ingest message reaches only the rule it names): the envelope + the topic's
        # thing and kind, to the lake's Firehose and to the ingest Lambda
        kind = rule.logical_id[: -len("Rule")].lower()
        assert rule.rule_name == f"battwin_{kind}"  # the template's ResourcePrefix default
        assert q.topic_filter == f"battwin/+/{kind}"
        assert (rule.firehose, rule.separator) == ("LakeFirehose", "\n")
        event = q.evaluate(Message(f"battwin/t-1/{kind}", b'{"id":"a","thing":"t-2"}', 7, client_id="t-1"))
        assert event == {
            "id": "a",
            "thing": "t-2",
            "rule_thing": "t-1",
            "rule_kind": kind,
            "rule_received_ms": 7,
            "rule_client_id": "t-1",
        }
    assert max_retry_attempts(load_template(), "IngestFunction") == 2


def test_rule_event_has_the_shape_the_rule_sql_produces() -> None:
    payload = b'{"v":1,"thing":"t-1"}'
    event = RuleQuery(RULE_SQL).evaluate(Message("battwin/t-1/telemetry", payload, 1_700_000_000_123))
    # clientid() is Undefined for a subscriber (the broker does not tell it), so the item is left out
    assert event == {
        "payload_b64": base64.b64encode(payload).decode(),
        "rule_topic": "battwin/t-1/telemetry",
        "rule_thing": "t-1",
        "rule_kind": "telemetry",
        "rule_received_ms": 1_700_000_000_123,
    }
    with_client = RuleQuery(RULE_SQL).evaluate(Message("battwin/t-1/telemetry", payload, 1, client_id="t-1"))
    assert with_client["rule_client_id"] == "t-1"


def test_select_star_form_merges_the_json_payload() -> None:
    q = RuleQuery("SELECT *, topic(2) AS rule_thing, topic(3) AS rule_kind FROM 'battwin/+/health'")
    event = q.evaluate(Message("battwin/p/health", b'{"id":"a","kind":"health"}', 5))
    assert event == {"id": "a", "kind": "health", "rule_thing": "p", "rule_kind": "health"}
    with pytest.raises(RuleEvaluationError):
        q.evaluate(Message("battwin/p/health", b"\xff not json", 5))
    with pytest.raises(RuleEvaluationError):
        q.evaluate(Message("battwin/p/health", b"[1, 2]", 5))
    # topic(n) past the last level is Undefined: left out
    assert "x" not in RuleQuery("SELECT topic(9) AS x FROM 'a/#'").evaluate(Message("a/b", b"{}", 1))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM 'battwin/+/telemetry' WHERE kind = 'x'",
        "SELECT newuuid() AS id FROM 'a/b'",
        "SELECT topic(2) FROM 'a/b'",
        "DELETE FROM 'a/b'",
    ],
)
def test_sql_the_runner_cannot_mirror_is_refused_up_front(sql: str) -> None:
    with pytest.raises(RuleSqlError):
        RuleQuery(sql)


def test_topic_filters() -> None:
    assert topic_matches("battwin/+/telemetry", "battwin/t1/telemetry")
    assert not topic_matches("battwin/+/telemetry", "battwin/t1/cycles")
    assert not topic_matches("battwin/+/telemetry", "battwin/t1/telemetry/x")
    assert topic_matches("battwin/#", "battwin/t1/telemetry")
    assert not topic_matches("battwin/+", "battwin")


# -- against the emulated AWS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    with LocalAws.running() as local:
        yield local


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def test_tables_and_bucket_are_created_as_the_template_defines_them(aws: LocalAws) -> None:
    template = load_template()
    ddb = aws.client("dynamodb")
    for logical, name in (
        ("DeviceStateTable", aws.names.device_state_table),
        ("HistoryTable", aws.names.history_table),
    ):
        want = table_request(template, logical, name)
        got = ddb.describe_table(TableName=name)["Table"]
        assert got["KeySchema"] == want["KeySchema"]
        assert sorted(got["AttributeDefinitions"], key=str) == sorted(want["AttributeDefinitions"], key=str)
        assert got["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    gsi = ddb.describe_table(TableName=aws.names.history_table)["Table"]["GlobalSecondaryIndexes"]
    assert [(g["IndexName"], g["KeySchema"]) for g in gsi] == [
        ("by_thing_time", [{"AttributeName": "thing", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
    ]
    ttl = ddb.describe_time_to_live(TableName=aws.names.history_table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at" and ttl["TimeToLiveStatus"] == "ENABLED"
    enc = aws.client("s3").get_bucket_encryption(Bucket=aws.names.bucket)
    assert (
        enc["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        == "AES256"
    )
    attrs = aws.client("sqs").get_queue_attributes(QueueUrl=aws.failure_queue_url, AttributeNames=["All"])
    assert attrs["Attributes"]["MessageRetentionPeriod"] == "1209600"
    env = aws.ingest_environment()
    assert env["HISTORY_TABLE"] == aws.names.history_table and env["DEAD_LETTER_PREFIX"] == "dead-letter/"
    assert "LAKE_PREFIX" not in env  # the ingest does not write the lake


def _ingestor(aws: LocalAws) -> Ingestor:
    env = aws.ingest_environment()
    settings = IngestSettings(
        history_table=env["HISTORY_TABLE"],
        device_state_table=env["DEVICE_STATE_TABLE"],
        bucket=env["DATA_BUCKET"],
        dead_letter_prefix=env["DEAD_LETTER_PREFIX"],
    )
    return Ingestor(settings, dynamodb=aws.client("dynamodb"), s3=aws.client("s3"))


def test_messages_on_the_broker_reach_dynamodb_and_the_lake(aws: LocalAws, broker: EmbeddedBroker) -> None:
    ingestor = _ingestor(aws)
    outcomes: list[dict[str, Any]] = []

    def ingest(event: dict[str, Any]) -> dict[str, Any]:
        out = ingestor.handle(event).as_dict()
        outcomes.append(out)
        return out

    errors: list[tuple[str, bytes]] = []
    runner = LocalRulesRunner(
        broker.url, {"IngestFunction": ingest, **aws.firehose_targets()}, error_sink=lambda k, b: errors.append((k, b))
    ).start()
    publisher = MqttTransport(MqttSettings(url=broker.url), client_id="rules-test-pub")
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        now = time.time()
        publisher.publish("battwin/rules-t1/telemetry", _telemetry_payload("rules-t1", now - 10)).result(10)
        publisher.publish("battwin/rules-t1/telemetry", b"not json at all").result(10)
        # thing in the topic ≠ thing in the envelope: the handler must see the topic (rule_thing) to refuse it
        publisher.publish("battwin/other/telemetry", _telemetry_payload("rules-t1", now - 5)).result(10)
        publisher.publish("battwin/rules-t1/unrouted", b"{}").result(10)
        alarm = Alarm(ts=now - 4, code="over_temperature", severity="warning", message="hot", source_id="simulator:x")
        publisher.publish("battwin/rules-t1/alarms", encode_envelope("rules-t1", "alarms", alarm, now - 4)).result(10)
        wait_for(lambda: len(outcomes) >= 1 and len(errors) >= 1, 20, 0.1, "the alarm's outcome and a rule error")
        assert runner.wait_idle(10)
    finally:
        publisher.stop()
        runner.stop()
    # the ingest Lambda sees the alarm only: telemetry's rule feeds the lake, whose transform stores it; the
    # non-JSON payload fails the rule's SELECT * and never reaches either (its error action keeps it)
    assert [(o["status"], o.get("reason")) for o in outcomes] == [("stored", None)]
    stats = runner.stats()
    assert stats["rules_triggered"] == 4 and stats["triggered:TelemetryRule"] == 3  # one rule per message
    live = newest_live_item(aws.client("dynamodb"), aws.names.history_table, "rules-t1")
    assert live is not None and (latest_sample(live) or {})["voltage_v"] == 14.8
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=aws.names.bucket)["Contents"]]
    # telemetry reaches the lake through the Firehose rule (no per-message object from the ingest), partitioned
    # by kind and the envelope's day; both well-formed telemetry messages are there (the Athena view keeps the one
    # whose envelope names the topic's thing), the non-JSON one is not (the rule's error action took it)
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 10))
    lake = [k for k in keys if k.startswith(f"lake/kind=telemetry/dt={day}/")]
    records = [
        json.loads(line)
        for k in lake
        for line in s3.get_object(Bucket=aws.names.bucket, Key=k)["Body"].read().splitlines()
    ]
    assert sorted((r["rule_thing"], r["thing"], len(telemetry_samples(r["body"]))) for r in records) == [
        ("other", "rules-t1", 3),
        ("rules-t1", "rules-t1", 3),
    ]
    # the alarm reaches the lake the same way (its rule's Firehose record), in its kind's partition
    alarms = [
        k for k in keys if k.startswith(f"lake/kind=alarms/dt={time.strftime('%Y-%m-%d', time.gmtime(now - 4))}/")
    ]
    (record,) = [json.loads(s3.get_object(Bucket=aws.names.bucket, Key=k)["Body"].read()) for k in alarms]
    assert (record["rule_kind"], record["body"]["code"]) == ("alarms", "over_temperature")
    assert not [k for k in keys if k.startswith("lake/") and k not in lake + alarms]
    # History keeps a compact live window of the stored telemetry message, expiring after a day
    hist = aws.client("dynamodb").scan(TableName=aws.names.history_table)["Items"]
    assert sorted(json.loads(i["body"]["S"]).get("of", 0) for i in hist) == [0, 3]
    assert not any(k.startswith("dead-letter/reason=not_json/") for k in keys)
    # the telemetry naming another thing than its topic's: the transform dead-letters it with the reason
    (letter,) = [k for k in keys if k.startswith("dead-letter/reason=thing_mismatch/")]
    assert json.loads(s3.get_object(Bucket=aws.names.bucket, Key=letter)["Body"].read())["topic_thing"] == "other"
    # the rule cannot SELECT * from the non-JSON payload: its error action keeps it, with the reason
    ((key, body),) = errors
    assert key.startswith("dead-letter/rule-errors/battwin/rules-t1/telemetry/")
    record = json.loads(body)
    assert (record["ruleName"], record["payload_b64"]) == (
        "TelemetryRule",
        base64.b64encode(b"not json at all").decode(),
    )
    assert record["failures"][0]["errorMessage"] == "SELECT * needs a JSON payload"


def test_select_star_rule_failure_runs_the_error_action(broker: EmbeddedBroker) -> None:
    template = load_template()
    for res in template["Resources"].values():  # the same rules, written in the SELECT * form
        if res.get("Type") == "AWS::IoT::TopicRule":
            topic = res["Properties"]["TopicRulePayload"]["Sql"].split("FROM")[1].strip()
            res["Properties"]["TopicRulePayload"]["Sql"] = f"SELECT *, topic(2) AS rule_thing FROM {topic}"
    events: list[dict[str, Any]] = []
    errors: list[tuple[str, bytes]] = []
    runner = LocalRulesRunner(
        broker.url,
        {"IngestFunction": events.append, "LakeFirehose": lambda _record: None},
        error_sink=lambda k, b: errors.append((k, b)),
        template=template,
    )
    runner.deliver("battwin/s1/health", b'{"id": "x1", "kind": "health"}', 7)
    runner.deliver("battwin/s1/health", b"garbage", 8)
    runner.start()
    try:
        assert runner.wait_idle(10)
    finally:
        runner.stop()
    assert events == [{"id": "x1", "kind": "health", "rule_thing": "s1"}]
    # the topic's one rule fails on it and runs its error action
    assert [json.loads(b)["ruleName"] for _k, b in errors] == ["HealthRule"]
    for key, body in errors:
        assert key.startswith("dead-letter/rule-errors/battwin/s1/health/") and key.endswith(".json")
        assert base64.b64decode(json.loads(body)["payload_b64"]) == b"garbage"


@pytest.mark.slow
def test_a_failing_invocation_is_retried_then_recorded(broker: EmbeddedBroker) -> None:
    calls: list[float] = []
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()

    def failing(event: dict[str, Any]) -> Any:
        with lock:
            calls.append(time.monotonic())
        raise RuntimeError("throttled")

    targets = {"IngestFunction": failing, "LakeFirehose": lambda _record: None}
    runner = LocalRulesRunner(broker.url, targets, failure_sink=failures.append, workers=1)
    runner.deliver("battwin/f1/alarms", b'{"id":"z"}', 1)
    runner.start()
    try:
        assert runner.wait_idle(15)
    finally:
        runner.stop()
    assert len(calls) == 3  # the first attempt + MaximumRetryAttempts (2) from the template
    assert calls[1] - calls[0] >= 0.4
    assert len(failures) == 1
    record = failures[0]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestPayload"]["rule_thing"] == "f1"
    assert record["responsePayload"]["errorMessage"] == "throttled"
    assert runner.stats()["failed_invocations"] == 1


def test_the_local_lake_stream_takes_a_past_of_many_days_and_kinds(aws: LocalAws) -> None:
    """A demo battery's backfilled past spans hundreds of days: each kind and day is a partition, and moto allows 50
    delivery streams; every record still lands once under its own partition (the demo's fleet stalled on it)."""
    (put,) = aws.firehose_targets().values()
    day0 = 1_700_006_400  # a UTC midnight
    days = 70
    for d in range(days):
        for kind in ("cycles", "health"):
            record = {"kind": kind, "rule_kind": kind, "ts": day0 + d * 86_400 + 60, "thing": "t", "id": f"{kind}{d}"}
            put(json.dumps(record).encode() + b"\n")
    s3 = aws.client("s3")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.names.bucket, Prefix="lake/")
        for o in page.get("Contents", [])
    ]
    wanted = {f"dt={utc_day(day0 + d * 86_400)}" for d in range(days)}
    for kind in ("cycles", "health"):
        mine = [k for k in keys if k.startswith(f"lake/kind={kind}/") and k.split("/")[2] in wanted]
        assert len(mine) == days  # one object per record (moto writes each as it is put), none lost
        assert {k.split("/")[2] for k in mine} == wanted


# -- Basic Ingest ----------------------------------------------------------------------------------------------


def _recording_runner(errors: list[tuple[str, bytes]] | None = None) -> tuple[LocalRulesRunner, dict[str, list[Any]]]:
    got: dict[str, list[Any]] = {"ingest": [], "lake": []}
    runner = LocalRulesRunner(
        "mqtt://127.0.0.1:1",  # never connected: deliver() feeds it
        {"IngestFunction": got["ingest"].append, "LakeFirehose": got["lake"].append},
        error_sink=(lambda k, b: errors.append((k, b))) if errors is not None else None,
        workers=1,
    )
    return runner.start(subscribe=False), got


def test_a_basic_ingest_message_triggers_only_the_rule_it_names_on_the_topic_without_the_prefix() -> None:
    errors: list[tuple[str, bytes]] = []
    runner, got = _recording_runner(errors)
    health = b'{"id":"h1","thing":"s1","kind":"health"}'
    try:
        assert runner.deliver("$aws/rules/battwin_health/battwin/s1/health", health, 5) == 1
        assert runner.wait_idle(10)
        # topic(2)/topic(3) see battwin/s1/health, as in IoT Core (the prefix is not available to topic(n))
        assert got["ingest"] == [
            {**json.loads(health), "rule_thing": "s1", "rule_kind": "health", "rule_received_ms": 5}
        ]
        assert [json.loads(r) for r in got["lake"]] == got["ingest"]
        stats = runner.stats()
        assert (stats["rules_triggered"], stats["triggered:HealthRule"], stats["basic_ingest"]) == (1, 1, 1)
        assert not any(k.startswith("triggered:") and k != "triggered:HealthRule" for k in stats)
        # the rule's FROM is not a filter for Basic Ingest: the named rule runs, on the topic it is given (its
        # topic(3) then says "cycles", which the ingest refuses as a kind mismatch and the lake puts under rejected)
        assert runner.deliver("$aws/rules/battwin_health/battwin/s1/cycles", health, 6) == 1
        assert runner.wait_idle(10)
        assert got["ingest"][-1]["rule_kind"] == "cycles" and runner.stats()["triggered:HealthRule"] == 2
        assert "triggered:CyclesRule" not in runner.stats()
        # a rule that does not exist: nothing runs (IoT Core logs it and counts RuleNotFound)
        assert runner.deliver("$aws/rules/battwin_nosuch/battwin/s1/health", health, 7) == 0
        assert runner.deliver("$aws/rules/", health, 7) == 0  # no rule name: not a Basic Ingest topic
        assert runner.stats()["rule_not_found"] == 1
        # the same message on the plain topic: every rule whose FROM matches (one, since the rules were merged)
        assert runner.deliver("battwin/s1/health", health, 8) == 1
        # a payload that is not JSON fails the named rule's SELECT *: its error action, keyed by the topic it saw
        assert runner.deliver("$aws/rules/battwin_cycles/battwin/s1/cycles", b"\x00garbage", 9) == 1
        assert runner.wait_idle(10)
    finally:
        runner.stop()
    assert len(got["ingest"]) == len(got["lake"]) == 3
    ((key, body),) = errors
    assert key.startswith("dead-letter/rule-errors/battwin/s1/cycles/") and key.endswith(".json")
    record = json.loads(body)
    assert record["ruleName"] == "CyclesRule" and record["topic"] == "battwin/s1/cycles"
    assert base64.b64decode(record["payload_b64"]) == b"\x00garbage"
    assert record["failures"] == [{"errorMessage": "SELECT * needs a JSON payload"}]
    assert runner.stats()["rules_triggered"] == 4


def test_basic_ingest_names_the_rules_by_the_templates_resource_prefix() -> None:
    template = load_template()
    template["Parameters"]["ResourcePrefix"]["Default"] = "fleet7"
    runner = LocalRulesRunner(
        "mqtt://127.0.0.1:1", {"IngestFunction": lambda _e: None, "LakeFirehose": lambda _r: None}, template=template
    )
    assert sorted(runner.by_name) == [
        "fleet7_alarms",
        "fleet7_cycles",
        "fleet7_health",
        "fleet7_presence",
        "fleet7_telemetry",
    ]
