"""The cost model of issue #16: the 5 KB metering, the line arithmetic on hand-checked inputs, today's bill at
the issue's stated traffic, and traffic read from a real agent run through the real ingest handler."""

from __future__ import annotations

import pytest

from cloud import cost_model as cm
from cloud.lake_expand.handler import expand_record
from schema.messages import telemetry_samples

MONTH = cm.HOURS_PER_MONTH


def traffic(
    kinds: dict[str, tuple[float, int]], compact: dict[str, tuple[float, int]] | None = None
) -> cm.DeviceTraffic:
    """(messages per hour, bytes each) per kind -> a DeviceTraffic stated by hand."""

    def build(spec: dict[str, tuple[float, int]]) -> dict[str, cm.KindTraffic]:
        return {
            k: cm.KindTraffic(
                messages_per_hour=n, payload_bytes_per_hour=n * size, units_5kb_per_hour=n * cm.units_5kb(size)
            )
            for k, (n, size) in spec.items()
        }

    return cm.DeviceTraffic(
        source="stated", simulated_hours=1.0, json_kinds=build(kinds), compact_kinds=build(compact or kinds)
    )


def one_path(**kw: float) -> cm.CloudPath:
    fields = dict(
        messages=1,
        s3_puts=1.0,
        s3_put_bytes=1000.0,
        ddb_wru=12.0,
        ddb_gsi_wru=1.0,
        ddb_stored_bytes=11_500.0,
        ddb_calls=2.0,
        glue_calls=0.0,
        cpu_s=0.0,
        log_bytes=0.0,
    )
    fields.update(kw)
    return cm.CloudPath(source="stated", kinds={"telemetry": cm.KindPath(**fields)}, calls={})


def test_5kb_rounding() -> None:
    assert cm.units_5kb(11 * 1024) == 3  # the issue's ~11 KB telemetry batch: 3 IoT units
    assert cm.units_5kb(5 * 1024) == 1
    assert cm.units_5kb(5 * 1024 + 1) == 2
    assert cm.units_5kb(0) == 1  # an empty message is still one unit
    with pytest.raises(ValueError):
        cm.units_5kb(-1)
    kt = cm.KindTraffic.from_sizes([100, 5121, 11 * 1024], hours=1.0)
    assert kt.units_5kb_per_hour == 1 + 2 + 3  # per message, not from the mean size (which would give 2 x 3)


def test_iot_messaging_tiers() -> None:
    assert cm.PRICES.iot_messaging_usd(1e6) == pytest.approx(1.00)
    assert cm.PRICES.iot_messaging_usd(2e9) == pytest.approx(1000 + 800)
    assert cm.PRICES.iot_messaging_usd(6e9) == pytest.approx(1000 + 4000 * 0.8 + 1000 * 0.7)


def test_line_arithmetic_one_11kb_message_per_hour() -> None:
    t = traffic({"telemetry": (1.0, 11 * 1024)})
    before = cm.Assumptions(raw_ttl_days=30.0)  # TODAY kept raw telemetry in History for 30 days
    bill = cm.monthly_bill(t, one_path(), cm.TODAY, fleet_size=1, assume=before)
    units = 3 * MONTH  # 2,190 five-KB units a month
    assert bill.lines_usd["iot_messaging"] == pytest.approx(units * 1e-6, rel=1e-4)
    assert bill.lines_usd["iot_rules"] == pytest.approx(units * 0.15e-6, rel=1e-4)
    assert bill.lines_usd["iot_actions"] == pytest.approx(units * 0.15e-6, rel=1e-4)
    assert bill.lines_usd["s3_puts"] == pytest.approx(MONTH * 0.005 / 1000, rel=1e-4)
    assert bill.lines_usd["dynamodb_writes"] == pytest.approx(MONTH * 13 * 0.625e-6, rel=1e-4)
    assert bill.lines_usd["lambda_requests"] == pytest.approx(MONTH * 0.2e-6, rel=1e-4)
    # duration: 1 S3 PUT (25 ms) + 2 DynamoDB calls (6 ms) = 37 ms at 0.5 GB
    assert bill.lines_usd["lambda_duration"] == pytest.approx(MONTH * 0.037 * 0.5 * 0.0000166667, rel=1e-3)
    # 30 days of TTL'd History items (11,500 B each) kept: storage and PITR on the same bytes
    stored_gb = MONTH * 11_500 * (30 / (MONTH / 24)) / cm.GB
    assert bill.lines_usd["dynamodb_storage"] == pytest.approx(stored_gb * 0.25, rel=1e-4)
    assert bill.lines_usd["dynamodb_pitr"] == pytest.approx(stored_gb * 0.20, rel=1e-4)
    # Basic Ingest drops exactly the messaging line
    basic_ingest = cm.TODAY.model_copy(update={"ingress": "basic_ingest"})
    basic = cm.monthly_bill(t, one_path(), basic_ingest, fleet_size=1, assume=before)
    assert basic.lines_usd["iot_messaging"] == 0.0
    assert basic.total_usd == pytest.approx(bill.total_usd - bill.lines_usd["iot_messaging"], abs=1e-6)


def test_compact_telemetry_round_trips_and_fits_one_unit() -> None:
    messages = cm.run_agent(0.05, thing="cost-compact")  # 180 samples: three 60-sample batches
    tele = [p for t, p in messages if t.endswith("/telemetry")]
    assert tele
    import json

    for payload in tele:  # the agent sends packed telemetry by default
        small = cm.compact_telemetry(payload)
        plain = cm.plain_telemetry(payload)
        assert small == payload and cm.compact_telemetry(plain) == payload
        assert cm.units_5kb(len(small)) == 1 < cm.units_5kb(len(plain))
        row = json.loads(expand_record(small))  # what the lake keeps: the plain envelope
        assert row == json.loads(plain)
        assert telemetry_samples(row["body"]) == telemetry_samples(json.loads(payload)["body"])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        cm.monthly_bill(traffic({"telemetry": (1.0, 100)}), one_path(), cm.TODAY, fleet_size=0)
    with pytest.raises(ValueError):
        cm.KindTraffic(messages_per_hour=-1.0, payload_bytes_per_hour=0.0, units_5kb_per_hour=0.0)


@pytest.fixture(scope="module")
def measured() -> tuple[cm.DeviceTraffic, list[tuple[str, bytes]], cm.CloudPath]:
    t, messages = cm.measure_device_traffic(6.0)  # long enough for cycles and health messages
    return t, messages, cm.measure_cloud_path(messages)


@pytest.mark.slow
def test_traffic_and_requests_come_from_a_real_run(
    measured: tuple[cm.DeviceTraffic, list[tuple[str, bytes]], cm.CloudPath],
) -> None:
    t, messages, path = measured
    assert "real agent" in t.source and "real ingest handler" in path.source
    # the deployed default (the recipe's mqtt section): every message on its kind's Basic Ingest topic
    assert t.ingress == "basic_ingest"
    assert all(topic.startswith(f"$aws/rules/battwin_{topic.rsplit('/', 1)[1]}/battwin/") for topic, _ in messages)
    # the default settings: 1 s sampling in 60-sample batches, packed -> 60 telemetry messages an hour, each one
    # 5 KB unit (as plain JSON, > 10 KB: three units)
    tele = t.compact_kinds["telemetry"]
    plain = t.json_kinds["telemetry"]
    assert tele.messages_per_hour == plain.messages_per_hour == pytest.approx(60, abs=1)
    hours = t.simulated_hours
    tele_sizes = [len(p) for topic, p in messages if topic.endswith("/telemetry")]
    assert tele.payload_bytes_per_hour == pytest.approx(sum(tele_sizes) / hours)
    assert tele.units_5kb_per_hour == pytest.approx(sum(cm.units_5kb(s) for s in tele_sizes) / hours)
    assert tele.units_5kb_per_hour == tele.messages_per_hour
    plain_sizes = [len(cm.plain_telemetry(p)) for topic, p in messages if topic.endswith("/telemetry")]
    assert plain.payload_bytes_per_hour == pytest.approx(sum(plain_sizes) / hours)
    assert plain.units_5kb_per_hour == pytest.approx(3 * plain.messages_per_hour)
    n_tele = sum(1 for topic, _ in messages if topic.endswith("/telemetry"))
    # the hook counted the handlers' calls: the ingest's one History put per cycles/health/alarm message (telemetry
    # does not invoke it), the lake transform's one live-window batch write per telemetry record; no lake object
    # from either (every kind reaches the lake through its rule's Firehose action)
    assert path.calls["dynamodb.PutItem"] == len(messages) - n_tele > 0
    assert path.calls["transform.dynamodb.BatchWriteItem"] == n_tele
    assert path.calls["transform.dynamodb.PutItem"] == 1  # the thing's DeviceState, at its first batch
    assert path.calls.get("s3.PutObject", 0) == 0
    assert not any(name.startswith("glue.") for name in path.calls)
    for kind in ("cycles", "health"):  # the small kinds: one rule (Firehose record + the ingest Lambda) each
        small = path.kinds[kind]
        assert (small.rules_triggered, small.lambda_invocations, small.firehose_records) == (1.0, 1.0, 1.0)
        assert small.s3_puts == 0.0 and small.firehose_billed_bytes == 5 * 1024
    kp = path.kinds["telemetry"]
    # the template's rules on the telemetry topic: the lake's Firehose rule alone, no Lambda invoked
    assert kp.rules_triggered == 1.0 and kp.lambda_invocations == 0.0 and kp.firehose_records == 1.0
    assert kp.s3_puts == 0.0 and kp.glue_calls == 0.0 and kp.ddb_wru == kp.ddb_gsi_wru == kp.cpu_s == 0.0
    # the record is the whole (packed) envelope (+ the rule's fields), billed in 5 KB steps: one; the stream's
    # transform expands it to the plain rows the lake keeps, gzip'd in its buffer
    assert kp.firehose_record_bytes > tele.mean_payload_bytes
    assert kp.firehose_billed_bytes == 5 * 1024
    assert kp.firehose_expanded_bytes > 5 * kp.firehose_record_bytes
    assert 0 < kp.firehose_gz_bytes < kp.firehose_expanded_bytes / 4
    # the raw batch (~11 KB) is not in DynamoDB: the transform's live-window item is one unit (not in the by-time
    # index), plus the thing's DeviceState item once; half a read unit to learn whether the thing has one
    assert kp.transform_wru == pytest.approx(1.0 + 1.0 / n_tele)
    assert kp.ddb_stored_bytes <= 1024 + 100 and kp.transform_rru == 0.5
    assert kp.transform_cpu_s > 0 and 0 < kp.transform_ddb_calls < 0.1  # batched: 25 items, 100 keys a call


@pytest.mark.slow
def test_the_built_path_at_the_issues_traffic(
    measured: tuple[cm.DeviceTraffic, list[tuple[str, bytes]], cm.CloudPath],
) -> None:
    """The issue's traffic (60.8 messages/hour, ~11 KB telemetry = 3 units, 1,000 devices) on the path as built:
    IoT messaging unchanged ($0.132: MQTT topics, JSON telemetry), no Glue line, S3 PUTs per Firehose buffer
    instead of per message (the issue's $0.222), Athena's GETs of a few buffer objects per kind and day instead of
    a year of per-message objects (was $0.71), Firehose billed on 5 KB-rounded records, DynamoDB writes far below
    the issue's ~$0.40 of full telemetry items."""
    _t, _m, path = measured
    issue = traffic({"telemetry": (60.0, 11 * 1024), "cycles": (0.54, 630), "health": (0.26, 2000)})
    bill = cm.monthly_bill(issue, path, cm.BUILT, fleet_size=1000)
    assert bill.lines_usd["iot_messaging"] == pytest.approx(0.132, rel=0.02)  # 60.8 x 730 x ~3 units at $1/M
    assert bill.lines_usd["glue_catalog"] == 0.0
    assert bill.lines_usd["s3_puts"] < 0.001
    # the dashboard's loads GET the fleet's buffer objects (a few per kind and day), shared by 1,000 devices
    assert bill.lines_usd["s3_gets"] < 0.02
    tele = path.kinds["telemetry"]
    # every kind's records, each rounded up to 5 KB (a 630 B cycle record is billed as 5 KB)
    billed = 60.0 * tele.firehose_billed_bytes + (0.54 + 0.26) * 5 * 1024
    assert bill.lines_usd["firehose_ingest"] == pytest.approx(MONTH * billed / 1024**3 * 0.029, rel=1e-6)
    assert 0 < bill.lines_usd["firehose_dynamic_partitioning"] < 0.02
    # telemetry: one write unit a message (the issue's ~$0.40 were ~11 units + index + state)
    per_hour = {"telemetry": 60.0, "cycles": 0.54, "health": 0.26}
    units = sum(
        n * (path.kinds[k].ddb_wru + path.kinds[k].ddb_gsi_wru + path.kinds[k].transform_wru)
        for k, n in per_hour.items()
    )
    assert bill.lines_usd["dynamodb_writes"] == pytest.approx(MONTH * units * 0.625 / 1e6, rel=1e-6)
    assert bill.lines_usd["dynamodb_writes"] < 0.05
    # every message triggers one rule; telemetry's has one action (the lake's Firehose), the small kinds' two (+ the
    # ingest Lambda); rules and actions are both $0.15 per million, metered in the message's 5 KB units
    assert bill.lines_usd["iot_rules"] == pytest.approx(MONTH * (60.0 * 3 + (0.54 + 0.26)) * 0.15 / 1e6)
    assert bill.lines_usd["iot_actions"] == pytest.approx(MONTH * (60.0 * 3 + 2 * (0.54 + 0.26)) * 0.15 / 1e6)


@pytest.mark.slow
def test_the_built_path_from_a_real_run_is_within_the_target_and_basic_ingest_is_what_gets_it_there(
    measured: tuple[cm.DeviceTraffic, list[tuple[str, bytes]], cm.CloudPath],
) -> None:
    """Issue #16's target, on this run's measured traffic and requests: the path as built at or below $0.10 per
    device-month at every fleet size, with no IoT messaging line (Basic Ingest) and no ingest Lambda per telemetry
    message; the same agent on plain MQTT topics pays the messaging line and is above the target."""
    t, _messages, path = measured
    plain_t, plain_messages = cm.measure_device_traffic(t.simulated_hours, mqtt={})
    assert plain_t.ingress == "mqtt"
    plain_path = cm.measure_cloud_path(plain_messages)
    for n in cm.FLEET_SIZES:
        bill = cm.monthly_bill(t, path, cm.BUILT, n)
        assert bill.lines_usd["iot_messaging"] == 0.0
        assert bill.total_usd <= 0.10, (n, bill.total_usd)
        plain = cm.monthly_bill(plain_t, plain_path, cm.BUILT, n)
        assert plain.lines_usd["iot_messaging"] > 0.03 and plain.total_usd > 0.10
        # the rest of the path is the same: the bills differ by the messaging line (within the runs' CPU noise)
        assert plain.total_usd - plain.lines_usd["iot_messaging"] == pytest.approx(bill.total_usd, abs=0.002)


def test_bigger_batches_mean_fewer_messages_each_still_one_unit() -> None:
    """cloud/README.md "by batch size": the operator's knob. 200-sample batches at 1 s sampling are 18 telemetry
    messages an hour instead of 60, each packed batch still within one 5 KB unit (a 4S pack)."""
    hours = 2.0
    default = cm.measure_device_traffic(hours)[0].compact_kinds["telemetry"]
    big, messages = cm.measure_device_traffic(hours, telemetry={"batch_max_samples": 200, "batch_max_age_s": 200.0})
    tele = big.compact_kinds["telemetry"]
    assert default.messages_per_hour == pytest.approx(60, abs=1)
    assert tele.messages_per_hour == pytest.approx(3600 / 200, abs=1)
    assert tele.units_5kb_per_hour == pytest.approx(tele.messages_per_hour)  # one unit each
    assert "batch_max_samples" in big.source
    sizes = [len(p) for t, p in messages if t.endswith("/telemetry")]
    assert max(sizes) <= 5 * 1024
