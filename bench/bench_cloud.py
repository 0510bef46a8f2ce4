"""Cloud benchmarks (issue #6): ingest throughput on a moto server, and what one device costs in IoT Core.

1. Ingest: the ingest Lambda's handler (in-process, as Lambda runs it) storing real agent messages into
   DynamoDB + S3 on a moto server, against a baseline measured in the same run on the same server: raw
   boto3 ``put_item`` calls writing the same messages as single History items. Both are dominated by the
   emulator's request cost; the ratio is what the handler's extra work (History claim, lake object, state
   updates, completion mark: four to five requests per message) costs relative to one write.
2. Device traffic at default settings: the real agent (1 s sampling, telemetry batches of 60 samples or
   60 s, cycle/health/alarm messages as they happen) on the simulator for a simulated day, against an
   in-memory transport; payload sizes per kind, per hour, and IoT Core's billed messages (metered in
   5 KB increments, 5 KB taken as 5,120 bytes) per hour and per month (730 hours).

Prints a summary and writes bench/results/cloud.json.
"""

from __future__ import annotations

import base64
import json
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
BILLING_UNIT_BYTES = 5 * 1024
HOURS_PER_MONTH = 730
REGION = "us-east-1"


def agent_messages(hours: float, thing: str = "bench-device", start_ts: float | None = None) -> list[tuple[str, bytes]]:
    """The real agent at its default settings on the simulator (the cost model's own measurement)."""
    from cloud.cost_model import run_agent

    return run_agent(hours, thing=thing, start_ts=start_ts)


def device_traffic(hours: float = 24.0) -> dict[str, Any]:
    from device_agent.config import AgentConfig

    defaults = AgentConfig()
    msgs = agent_messages(hours)
    start = json.loads(msgs[0][1])["ts"] - defaults.telemetry.batch_max_age_s
    per_kind: dict[str, dict[str, float]] = defaultdict(
        lambda: {"messages": 0, "payload_bytes": 0, "topic_bytes": 0, "billed_messages": 0}
    )
    first_hour: Counter[str] = Counter()
    first_hour_billed = 0
    for topic, payload in msgs:
        kind = topic.rsplit("/", 1)[1]
        units = max(1, math.ceil(len(payload) / BILLING_UNIT_BYTES))
        k = per_kind[kind]
        k["messages"] += 1
        k["payload_bytes"] += len(payload)
        k["topic_bytes"] += len(topic.encode())
        k["billed_messages"] += units
        if json.loads(payload)["ts"] <= start + 3600:
            first_hour[kind] += 1
            first_hour_billed += units
    total_msgs = sum(k["messages"] for k in per_kind.values())
    total_bytes = sum(k["payload_bytes"] for k in per_kind.values())
    total_billed = sum(k["billed_messages"] for k in per_kind.values())
    for k in per_kind.values():
        k["mean_payload_bytes"] = k["payload_bytes"] / k["messages"]
        k["per_hour"] = k["messages"] / hours
    return {
        "settings": {
            "sample_interval_s": defaults.source.sample_interval_s,
            "batch_max_samples": defaults.telemetry.batch_max_samples,
            "batch_max_age_s": defaults.telemetry.batch_max_age_s,
            "decimation": defaults.telemetry.decimation,
            "simulated_hours": hours,
            "billing_unit_bytes": BILLING_UNIT_BYTES,
            "hours_per_month": HOURS_PER_MONTH,
        },
        "per_kind": dict(per_kind),
        "messages_per_hour": total_msgs / hours,
        "payload_bytes_per_hour": total_bytes / hours,
        "billed_messages_per_hour": total_billed / hours,
        "first_hour": {"messages": dict(first_hour), "billed_messages": first_hour_billed},
        "monthly_messages": total_msgs / hours * HOURS_PER_MONTH,
        "monthly_billed_messages": total_billed / hours * HOURS_PER_MONTH,
        "monthly_payload_mb": total_bytes / hours * HOURS_PER_MONTH / 1e6,
    }


def ingest_throughput(n_messages: int = 300) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    import boto3

    from cloud.aws import marshal, reset_clients
    from cloud.ingest.handler import handler
    from cloud.tables import history_pk, history_sk

    reset_clients()
    try:
        ddb, s3 = boto3.client("dynamodb", region_name=REGION), boto3.client("s3", region_name=REGION)
        keys = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
        attrs = [{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "thing")]
        gsi = [
            {
                "IndexName": "by_thing_time",
                "Projection": {"ProjectionType": "KEYS_ONLY"},
                "KeySchema": [
                    {"AttributeName": "thing", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
            }
        ]
        for name in ("History", "Baseline"):
            ddb.create_table(
                TableName=name,
                BillingMode="PAY_PER_REQUEST",
                KeySchema=keys,
                AttributeDefinitions=attrs,
                GlobalSecondaryIndexes=gsi,
            )
        ddb.create_table(
            TableName="DeviceState",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "thing", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "thing", "AttributeType": "S"}],
        )
        s3.create_bucket(Bucket="bench-lake")
        os.environ.update(
            {"HISTORY_TABLE": "History", "DEVICE_STATE_TABLE": "DeviceState", "DATA_BUCKET": "bench-lake"}
        )

        msgs = agent_messages(n_messages / 60.0 + 3.0, thing="bench-ingest")[: n_messages + 20]
        warm, msgs = msgs[:20], msgs[20:]
        samples = sum(len(json.loads(p)["body"].get("samples", [])) for _t, p in msgs)

        def event(topic: str, payload: bytes) -> dict[str, Any]:
            parts = topic.split("/")
            return {
                "payload_b64": base64.b64encode(payload).decode(),
                "rule_topic": topic,
                "rule_thing": parts[1],
                "rule_kind": parts[2],
                "rule_received_ms": int(time.time() * 1000),
            }

        for t, p in warm:
            handler(event(t, p))
        t0 = time.perf_counter()
        outcomes = Counter(handler(event(t, p))["status"] for t, p in msgs)
        handler_s = time.perf_counter() - t0
        assert outcomes == {"stored": len(msgs)}, outcomes
        t0 = time.perf_counter()
        dup = Counter(handler(event(t, p))["status"] for t, p in msgs[:100])
        duplicate_s = time.perf_counter() - t0
        assert dup == {"duplicate": min(100, len(msgs))}, dup

        # baseline: one put_item per message with the same History item (no checks, no lake, no state)
        items = []
        for _t, p in msgs:
            env = json.loads(p)
            items.append(
                marshal(
                    {
                        "pk": history_pk(env["thing"], env["kind"]),
                        "sk": history_sk(env["ts"], env["id"]),
                        "thing": env["thing"],
                        "kind": env["kind"],
                        "ts": env["ts"],
                        "id": env["id"],
                        "body": json.dumps(env["body"], separators=(",", ":")),
                    }
                )
            )
        for item in items[:20]:
            ddb.put_item(TableName="Baseline", Item={**item, "pk": {"S": "warm"}})
        t0 = time.perf_counter()
        for item in items:
            ddb.put_item(TableName="Baseline", Item=item)
        raw_s = time.perf_counter() - t0
    finally:
        reset_clients()
        server.stop()
    handler_rps = len(msgs) / handler_s
    raw_rps = len(msgs) / raw_s
    return {
        "messages": len(msgs),
        "samples": samples,
        "mean_payload_bytes": sum(len(p) for _t, p in msgs) / len(msgs),
        "handler_records_per_s": handler_rps,
        "handler_samples_per_s": samples / handler_s,
        "handler_duplicates_per_s": min(100, len(msgs)) / duplicate_s,
        "raw_put_item_per_s": raw_rps,
        "ratio_handler_vs_raw_put_item": handler_rps / raw_rps,
        "note": "both against the same moto server in this process; absolute rates are the emulator's",
    }


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    print("device traffic at default settings (real agent on the simulator, 24 simulated hours) ...", flush=True)
    traffic = device_traffic()
    print("ingest handler vs raw put_item on a moto server ...", flush=True)
    ingest = ingest_throughput()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ingest": ingest,
        "device_traffic": traffic,
    }
    (RESULTS / "cloud.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(
        f"ingest handler:   {ingest['handler_records_per_s']:8.1f} messages/s "
        f"({ingest['handler_samples_per_s']:.0f} samples/s, mean payload {ingest['mean_payload_bytes']:.0f} B)"
    )
    print(
        f"raw put_item:     {ingest['raw_put_item_per_s']:8.1f} items/s   "
        f"ratio handler/raw = {ingest['ratio_handler_vs_raw_put_item']:.2f}"
    )
    print(f"duplicates:       {ingest['handler_duplicates_per_s']:8.1f} messages/s (rejected by the conditional put)")
    print()
    print("one device, default settings (per hour):")
    for kind, k in sorted(traffic["per_kind"].items()):
        print(
            f"  {kind:<10} {k['per_hour']:7.2f} msgs  {k['mean_payload_bytes']:8.0f} B each  "
            f"{k['billed_messages'] / traffic['settings']['simulated_hours']:7.2f} billed"
        )
    print(
        f"  total      {traffic['messages_per_hour']:7.2f} msgs  {traffic['payload_bytes_per_hour'] / 1e6:8.3f} MB   "
        f"{traffic['billed_messages_per_hour']:7.2f} billed"
    )
    print(
        f"  first simulated hour: {traffic['first_hour']['messages']} → "
        f"{traffic['first_hour']['billed_messages']} billed"
    )
    print(
        f"per month (730 h): {traffic['monthly_messages']:,.0f} messages, "
        f"{traffic['monthly_billed_messages']:,.0f} billed messages, {traffic['monthly_payload_mb']:,.1f} MB"
    )
    print(f"\nwritten {RESULTS / 'cloud.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
