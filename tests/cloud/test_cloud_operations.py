"""Operators are told (issue 16, item 6) and the API's pages are bounded in bytes (item 4), on a moto server with
the template's tables: battery alarms reach SNS once per episode across duplicates, repeats, late messages and
a failed publish; a silent device is raised once and cleared by its next message or reconnect; the ingest
emits the metric the template's alarm watches; the template's CloudWatch alarms and dashboard cover the
system; no API page passes Lambda's 6 MB response limit and paging returns every item once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloud.api.handler import Api
from cloud.aws import marshal
from cloud.ingest.handler import Ingestor, IngestSettings
from cloud.local_stack.aws_local import LocalAws
from cloud.notify import SILENT_CODE
from cloud.silence.handler import SilenceCheck, SilenceSettings
from cloud.tables import history_pk, history_sk
from schema.messages import Alarm, encode_envelope
from tests.cloud.cloud_support import collected_emf, load_template, rule_event

NOW = float(int(time.time()))
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def local() -> Iterator[dict[str, Any]]:
    """A moto server with the template's tables and bucket, an SNS topic and a queue subscribed to it."""
    with LocalAws.running() as aws:
        sns, sqs = aws.client("sns"), aws.client("sqs")
        topic = sns.create_topic(Name="ops-test-alarms")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="ops-test-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
        env = aws.ingest_environment()
        yield {"aws": aws, "topic": topic, "queue_url": queue_url, "env": env}


def inbox(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every notice delivered to the subscribed queue since the last call (taken off the queue)."""
    sqs = local["aws"].client("sqs")
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=local["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=0)
        msgs = got.get("Messages", [])
        if not msgs:
            return out
        for m in msgs:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=local["queue_url"], ReceiptHandle=m["ReceiptHandle"])


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FlakySns:
    """An SNS client whose first ``fail`` publishes raise (a throttle or outage between claim and publish)."""

    def __init__(self, real: Any, fail: int) -> None:
        self.real = real
        self.fail = fail

    def publish(self, **kwargs: Any) -> Any:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("SNS unavailable")
        return self.real.publish(**kwargs)


def ingestor(local: dict[str, Any], sns: Any = None, clock: Clock | None = None) -> Ingestor:
    aws, env = local["aws"], local["env"]
    settings = IngestSettings(
        history_table=env["HISTORY_TABLE"],
        device_state_table=env["DEVICE_STATE_TABLE"],
        bucket=env["DATA_BUCKET"],
        alarm_topic_arn=local["topic"],
        metrics_namespace=env["METRICS_NAMESPACE"],
    )
    return Ingestor(
        settings,
        dynamodb=aws.client("dynamodb"),
        s3=aws.client("s3"),
        sns=sns or aws.client("sns"),
        clock=clock or Clock(NOW),
    )


def alarm(
    thing: str, ts: float, active: bool, code: str = "over_temperature", received_at: float = NOW
) -> dict[str, Any]:
    body = Alarm(
        ts=ts,
        code=code,
        severity="critical",
        active=active,
        message=f"{code} raised" if active else f"{code} cleared",
        details={"temperature_c": 63.5},
        source_id="simulator:9",
    )
    topic = f"battwin/{thing}/alarms"
    msg_id = f"{thing}-{code}-{ts:.0f}-{int(active)}"  # the same message delivered twice has one id
    return rule_event(
        topic, encode_envelope(thing, "alarms", body, ts=ts, msg_id=msg_id), received_ms=int(received_at * 1000)
    )


def notices(msgs: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return sorted((m["thing"], m["code"], m["episode_start"]) for m in msgs)


def test_battery_alarm_reaches_sns_once_per_episode(local: dict[str, Any]) -> None:
    ing = ingestor(local)
    inbox(local)
    t0 = NOW - 3600.0
    raise_1 = alarm("ops-a", t0, True)
    assert ing.handle(raise_1).status == "stored"
    # what follows are duplicates, repeats while active, another code,
    # a code operators are not paged for, a clear, a late (older) raise and a new raise
    events = [
        raise_1,  # duplicate delivery
        alarm("ops-a", t0 + 10, True),  # still active: same episode
        alarm("ops-a", t0 + 10, True),  # ... delivered twice
        alarm("ops-a", t0 + 5, True, code="cell_imbalance"),  # another code: its own episode
        alarm("ops-a", t0 + 6, True, code="spool_dropped"),  # the agent's housekeeping: stored, not paged
        alarm("ops-a", t0 + 7, True, code="resistance_jump"),  # an anomaly: paged
        alarm("ops-a", t0 + 20, True),
        alarm("ops-a", t0 + 30, False),  # clear: the episode ends
        alarm("ops-a", t0 + 25, True),  # late (older than the clear): changes nothing
        alarm("ops-a", t0 + 40, True),  # a new episode
        alarm("ops-a", t0 + 40, True),  # ... delivered twice
        alarm("ops-a", t0 + 50, True),
    ]
    statuses = [ing.handle(e).status for e in events]
    assert statuses.count("duplicate") == 3 and "dead_letter" not in statuses
    assert notices(inbox(local)) == [
        ("ops-a", "cell_imbalance", t0 + 5),
        ("ops-a", "over_temperature", t0),
        ("ops-a", "over_temperature", t0 + 40),
        ("ops-a", "resistance_jump", t0 + 7),
    ]


def test_a_failed_publish_is_retried_once_and_a_concurrent_duplicate_sends_nothing(local: dict[str, Any]) -> None:
    clock = Clock(NOW)
    sns = FlakySns(local["aws"].client("sns"), fail=1)
    ing = ingestor(local, sns=sns, clock=clock)
    inbox(local)
    raised = alarm("ops-b", NOW - 600.0, True, code="source_offline")
    with pytest.raises(RuntimeError, match="SNS unavailable"):
        ing.handle(raised)  # the claim was made, the publish failed: Lambda retries the invocation
    # a duplicate delivery within the claim's lease stores the message (the failed attempt did not get to the
    # History put) but leaves the notice to the claim's owner
    assert ing.handle(raised).status == "stored"
    assert inbox(local) == []
    clock.t += 120.0  # Lambda's asynchronous retry of the failed attempt comes a minute or more later
    assert ing.handle(raised).status == "duplicate"  # the retry: stored already, the notice taken over and sent
    assert ing.handle(raised).status == "duplicate"  # a later duplicate: sent already
    assert notices(inbox(local)) == [("ops-b", "source_offline", NOW - 600.0)]


def test_the_ingest_emits_the_metrics_the_alarms_watch(local: dict[str, Any]) -> None:
    with collected_emf() as records:
        ing = ingestor(local)
        bad = rule_event("battwin/ops-c/alarms", b"{not json")
        assert ing.handle(bad).status == "dead_letter"
        ok = rule_event("battwin/ops-c/alarms", b'{"v":1}')  # valid JSON, not an envelope
        assert ing.handle(ok).status == "dead_letter"
        assert ing.handle(alarm("ops-c", NOW - 100.0, True)).status == "stored"  # notices: counted too
    assert [r["DeadLetters"] for r in records] == [1, 1, 0]
    assert [r["AlarmNotifications"] for r in records] == [0, 0, 1]
    assert [r.get("reason") for r in records[:2]] == ["not_json", "invalid_envelope"]
    # the embedded metric format: CloudWatch Logs makes these metrics in the namespace the template's alarm reads
    tpl = load_template()
    dead = tpl["Resources"]["DeadLettersAlarm"]["Properties"]
    namespace = dead["Namespace"]["Fn::Sub"].replace(
        "${ResourcePrefix}", tpl["Parameters"]["ResourcePrefix"]["Default"]
    )
    for r in records:
        (directive,) = r["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == namespace == local["env"]["METRICS_NAMESPACE"]
        names = {m["Name"] for m in directive["Metrics"]}
        assert dead["MetricName"] in names and all(isinstance(r[n], int) for n in names)
        assert abs(r["_aws"]["Timestamp"] - NOW * 1000) < 1


def _state(local: dict[str, Any], thing: str) -> dict[str, Any]:
    from cloud.aws import unmarshal

    got = (
        local["aws"]
        .client("dynamodb")
        .get_item(TableName=local["env"]["DEVICE_STATE_TABLE"], Key={"thing": {"S": thing}}, ConsistentRead=True)
    )
    return unmarshal(got.get("Item", {}))


def test_a_silent_device_is_raised_once_and_cleared_by_a_message_or_a_reconnect(local: dict[str, Any]) -> None:
    ing = ingestor(local)
    aws = local["aws"]
    t_quiet, t_recent = NOW - 2000.0, NOW - 100.0
    ing.handle(alarm("ops-s1", t_quiet - 10, False, code="eol_reached", received_at=t_quiet))  # heard from at t_quiet
    ing.handle(alarm("ops-s2", t_recent - 10, False, code="eol_reached", received_at=t_recent))
    presence = {"clientId": "ops-s1", "eventType": "disconnected", "disconnectReason": "CONNECTION_LOST"}
    assert ing.handle({**presence, "timestamp": int((t_quiet + 5) * 1000)}).reason is None  # recorded
    assert ing.handle({**presence, "clientId": "ops-unknown", "timestamp": int(NOW * 1000)}).reason is not None
    assert _state(local, "ops-unknown") == {}  # a lifecycle event does not invent a device
    inbox(local)

    def check(now: float) -> tuple[list[str], list[str]]:
        settings = SilenceSettings(
            device_state_table=local["env"]["DEVICE_STATE_TABLE"], silence_after_s=900.0, alarm_topic_arn=local["topic"]
        )
        result = SilenceCheck(settings, dynamodb=aws.client("dynamodb"), sns=aws.client("sns")).run(now)
        ours = lambda things: sorted(t for t in things if t.startswith("ops-s"))  # noqa: E731
        return ours(result.silent), ours(result.notified)

    def silent_notices() -> list[tuple[str, str, float]]:  # the other tests' devices fall silent too
        return [n for n in notices(inbox(local)) if n[0].startswith("ops-s")]

    assert check(NOW) == (["ops-s1"], ["ops-s1"])
    msgs = inbox(local)
    assert notices(msgs) == [("ops-s1", SILENT_CODE, t_quiet)]
    assert msgs[0]["disconnect_reason"] == "CONNECTION_LOST" and msgs[0]["connected"] is False
    assert _state(local, "ops-s1")["silent_since"] == t_quiet
    api = Api(local["env"]["DEVICE_STATE_TABLE"], local["env"]["HISTORY_TABLE"], dynamodb=aws.client("dynamodb"))
    shown = json.loads(api.handle({"httpMethod": "GET", "path": "/devices/ops-s1"})["body"])
    assert (shown["silent_since"], shown["connected"]) == (t_quiet, False)  # what the API shows operators
    assert check(NOW + 300) == (["ops-s1"], [])  # the same episode: told once
    assert silent_notices() == []

    # the next message clears it; silence after that is a new episode
    t_back = NOW + 400
    ing.handle(alarm("ops-s1", t_back - 5, False, code="eol_reached", received_at=t_back))
    assert "silent_since" not in _state(local, "ops-s1")
    assert check(t_back + 60) == ([], [])
    assert check(t_back + 1000) == (["ops-s1", "ops-s2"], ["ops-s1", "ops-s2"])
    assert silent_notices() == [("ops-s1", SILENT_CODE, t_back), ("ops-s2", SILENT_CODE, t_recent)]

    # a reconnect clears it too (and starts the clock again)
    t_conn = t_back + 1100
    ing.handle({"clientId": "ops-s2", "eventType": "connected", "timestamp": int(t_conn * 1000)})
    assert "silent_since" not in _state(local, "ops-s2") and _state(local, "ops-s2")["connected"] is True
    assert check(t_conn + 60) == (["ops-s1"], [])
    assert check(t_conn + 1000) == (["ops-s1", "ops-s2"], ["ops-s2"])
    assert silent_notices() == [("ops-s2", SILENT_CODE, t_conn)]


# -- the template: CloudWatch alarms and dashboard ---------------------------------------------------


def _sub(value: Any) -> str:
    return value["Fn::Sub"] if isinstance(value, dict) and "Fn::Sub" in value else str(value)


def test_cloudwatch_alarms_and_dashboard_watch_the_system() -> None:
    tpl = load_template()
    res = tpl["Resources"]
    alarms = {k: v["Properties"] for k, v in res.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    functions = [k for k, v in res.items() if v["Type"] == "AWS::Lambda::Function"]
    assert len(functions) == 6
    watched = {
        (
            p["Namespace"] if isinstance(p["Namespace"], str) else _sub(p["Namespace"]),
            p["MetricName"],
            json.dumps(p.get("Dimensions")),
        )
        for p in alarms.values()
    }
    for fn in functions:  # errors and throttles of every Lambda (the ingest's errors among them)
        for metric in ("Errors", "Throttles"):
            dims = json.dumps([{"Name": "FunctionName", "Value": {"Ref": fn}}])
            assert ("AWS/Lambda", metric, dims) in watched, (fn, metric)
    # dead letters: the metric the ingest emits, in the namespace its environment names
    ingest_env = res["IngestFunction"]["Properties"]["Environment"]["Variables"]
    assert (_sub(ingest_env["METRICS_NAMESPACE"]), "DeadLetters", "null") in watched
    queue = json.dumps([{"Name": "QueueName", "Value": {"Fn::GetAtt": ["IngestFailureQueue", "QueueName"]}}])
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue) in watched
    for name, stream in res.items():  # a Firehose stream's delivery failures, if the template has one
        if stream["Type"] == "AWS::KinesisFirehose::DeliveryStream":
            assert any(
                p["Namespace"] == "AWS/Firehose" and json.dumps(p.get("Dimensions")).count(name)
                for p in alarms.values()
            ), name
    for name, p in alarms.items():  # each tells the operators and counts a quiet period as fine
        assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert p["TreatMissingData"] == "notBreaching", name
        if p["Namespace"] == "AWS/Firehose":  # a success ratio (1 = every delivery succeeded): below 1 alarms
            assert (p["MetricName"], p["Statistic"], p["Threshold"]) == ("DeliveryToS3.Success", "Minimum", 1), name
            assert p["ComparisonOperator"] == "LessThanThreshold", name
        else:
            assert p["Threshold"] == 0, name

    # the dashboard: valid JSON once substituted, showing every alarm and the ingest's metrics
    body = _sub(res["OperationsDashboard"]["Properties"]["DashboardBody"])
    refs = set(re.findall(r"\$\{([A-Za-z0-9:.]+)\}", body))
    assert set(functions) <= refs
    for p in alarms.values():  # by ARN (moto's CloudFormation does not create alarms: no GetAtt on them)
        arn = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:" + _sub(p["AlarmName"])
        assert f'"{arn}"' in body, arn
    dashboard = json.loads(re.sub(r"\$\{[A-Za-z0-9:.]+\}", "x", body))
    metrics = [tuple(m[:2]) for w in dashboard["widgets"] for m in w["properties"].get("metrics", [])]
    for name in ("DeadLetters", "Duplicates", "AlarmNotifications", "SilentDevices", "SilenceNotifications"):
        assert ("battwin/x", name) in metrics
    (alarm_widget,) = (w for w in dashboard["widgets"] if w["type"] == "alarm")
    assert len(alarm_widget["properties"]["alarms"]) == len(alarms)

    # the topic, its optional e-mail subscription, the silence schedule and the presence rule
    assert res["AlarmEmailSubscription"]["Condition"] == "SubscribeAlarmEmail"
    assert tpl["Conditions"]["SubscribeAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    assert tpl["Parameters"]["AlarmEmail"]["Default"] == ""
    schedule = res["SilenceCheckSchedule"]["Properties"]
    assert schedule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["SilenceCheckFunction", "Arn"]}
    sql = res["PresenceRule"]["Properties"]["TopicRulePayload"]["Sql"]
    assert "FROM '$aws/events/presence/+/+'" in sql
    # sns:Publish on the topic only, and only for the two functions that notify
    publishers = []
    for name, v in res.items():
        if v["Type"] != "AWS::IAM::Role":
            continue
        for pol in v["Properties"].get("Policies", []):
            for s in pol["PolicyDocument"]["Statement"]:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                if any(a.startswith("sns:") for a in actions):
                    assert actions == ["sns:Publish"] and s["Resource"] == {"Ref": "AlarmTopic"}, name
                    publishers.append(name)
    assert sorted(publishers) == ["IngestRole", "SilenceCheckRole"]


# -- the API: byte-bounded pages ---------------------------------------------------------------------

N_BIG = 24


class KeysOnlyIndexPages:
    """The DynamoDB client, except that a query of the KEYS_ONLY index returns up to ``Limit`` keys in one page
    as DynamoDB does (its 1 MB read page holds thousands of keys; moto counts the base items' size instead):
    the API then fetches the items of one page, far more than 6 MB of them."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def query(self, **kwargs: Any) -> dict[str, Any]:
        if "IndexName" not in kwargs:
            return dict(self.real.query(**kwargs))
        limit = int(kwargs["Limit"])
        items: list[dict[str, Any]] = []
        page: dict[str, Any] = {}
        while len(items) < limit:
            page = self.real.query(**{**kwargs, "Limit": limit - len(items)})
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        keys = [{k: it[k] for k in ("pk", "sk", "thing")} for it in items]
        more = "LastEvaluatedKey" in page
        return {"Items": keys, **({"LastEvaluatedKey": keys[-1]} if more and keys else {})}


@pytest.mark.slow  # ~7 MB of items through moto
@pytest.mark.every_python  # the API handler runs on the Lambda runtime's python3.13
def test_history_pages_stay_under_lambdas_response_limit_and_return_every_item_once(local: dict[str, Any]) -> None:
    aws, env = local["aws"], local["env"]
    ddb = aws.client("dynamodb")
    thing = "ops-big"
    # N_BIG items of ~280 KB of JSON, dense with quotes (each doubles when the body is escaped into the
    # response): ~7 MB of items, ~9 MB as a response if one page held them
    blob = ["ab"] * 55_000
    ids = []
    for k in range(N_BIG):
        kind = "telemetry" if k % 4 else "health"
        ts = NOW - 10_000 + k
        msg_id = f"big-{k:03d}"
        ids.append(msg_id)
        item = {
            "pk": history_pk(thing, kind),
            "sk": history_sk(ts, msg_id),
            "thing": thing,
            "kind": kind,
            "ts": ts,
            "id": msg_id,
            "simulated": True,
            "received_at": ts,
            "body": json.dumps({"blob": blob, "k": k}, separators=(",", ":")),
        }
        ddb.put_item(TableName=env["HISTORY_TABLE"], Item=marshal(item))
    api = Api(env["DEVICE_STATE_TABLE"], env["HISTORY_TABLE"], dynamodb=KeysOnlyIndexPages(ddb))

    def walk(query: dict[str, str]) -> tuple[list[str], list[int]]:
        got: list[str] = []
        sizes: list[int] = []
        token = None
        for _ in range(100):
            q = {**query, "limit": "1000", **({"next": token} if token else {})}
            resp = api.handle({"httpMethod": "GET", "path": f"/devices/{thing}/history", "queryStringParameters": q})
            assert resp["statusCode"] == 200, resp["body"][:300]
            sizes.append(len(json.dumps(resp).encode()))
            body = json.loads(resp["body"])
            got += [it["id"] for it in body["items"]]
            token = body["next"]
            if token is None:
                return got, sizes
        raise AssertionError("paging did not end")

    for query, expected in (({}, ids), ({"kind": "telemetry"}, [i for k, i in enumerate(ids) if k % 4])):
        got, sizes = walk(query)
        assert got == expected  # every item once, in time order
        assert max(sizes) <= LAMBDA_RESPONSE_LIMIT and len(sizes) >= 2, sizes
        assert sum(sizes) > LAMBDA_RESPONSE_LIMIT, sizes  # all in one response would have been over the limit
    # without kind, the pages were cut by their bytes (not by DynamoDB's 1 MB read page), close to the bound
    got, sizes = walk({})
    assert max(sizes) > 4 * 2**20, sizes
    got, sizes = walk({"order": "desc"})
    assert got == ids[::-1] and max(sizes) <= LAMBDA_RESPONSE_LIMIT
