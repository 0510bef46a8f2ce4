"""The cloud path at fleet scale on the local stack (issue #16, item 5): N simulated devices × a simulated day.

What runs is the deployed path, locally:

* the traffic: the real agent at its default settings on the simulator for ``hours`` simulated hours (one
  device's day: telemetry every minute, cycles, health, alarms as they happen), replayed as ``devices`` things —
  each copy gets its own thing name (topic and envelope) and message ids, and its clock is offset by a few
  seconds so the devices do not publish in lock step. Every message is simulated data (``simulated: true``,
  as the simulator tags it);
* the rules: :class:`~cloud.local_stack.rules.LocalRulesRunner` with the template's rules, each message handed to
  :meth:`~cloud.local_stack.rules.LocalRulesRunner.deliver` (what its MQTT subscription calls) in time order with
  its simulated receive time;
* the ingest: the real :class:`~cloud.ingest.handler.Ingestor` on the moto server of
  :class:`~cloud.local_stack.aws_local.LocalAws` (DeviceState, History, dead letters) for cycles, health and alarms;
* the lake: the rules' Firehose records through the stream's real transform (telemetry's live-window History
  items, new things' DeviceState) into :class:`~cloud.local_stack.firehose.BufferedFirehose` with the
  template's stream (128 MB / 900 s buffers per kind and day, gzip), on the simulated clock (the newest receive
  time it has seen), into the same moto bucket.

:func:`run_scale` returns what a fleet operator would count: lake objects per kind, History and DeviceState
items, dead letters, and the ingest throughput of this machine (wall time; reported, never a pass/fail bound).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud.cost_model import run_agent
from cloud.lake import parse_partition
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.firehose import BufferedFirehose
from cloud.local_stack.rules import LocalRulesRunner
from cloud.local_stack.template import firehose_streams, load_template
from schema.messages import is_packed, pack_samples, telemetry_samples

#: seconds between the clocks of two consecutive simulated devices (spreads their publishing over the minute)
DEVICE_OFFSET_S = 7.0


@dataclass(frozen=True)
class ScaleResult:
    devices: int
    simulated_hours: float
    messages: int
    messages_by_kind: dict[str, int]
    outcomes: dict[str, int]
    lake_objects_by_kind: dict[str, int]
    lake_records: int
    lake_error_objects: int
    history_items: int
    device_state_items: int
    #: telemetry's History items, written by the lake stream's transform (no ingest Lambda on that path)
    live_window_items: int
    #: things the transform gave a DeviceState item (heard from by telemetry before any other kind)
    registered_things: int
    dead_letter_objects: int
    wall_s: float
    workers: int
    rules_stats: dict[str, int] = field(default_factory=dict)

    @property
    def lake_objects(self) -> int:
        return sum(self.lake_objects_by_kind.values())

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lake_objects": self.lake_objects, "messages_per_s": round(self.messages_per_s, 2)}


def fleet_day(
    device_day: list[tuple[str, bytes]], devices: int, prefix: str = "scale"
) -> Iterator[tuple[int, str, bytes]]:
    """One device's messages replayed as ``devices`` things, in receive-time order: (received_ms, topic, payload).

    Device ``k`` is ``<prefix>-<k>`` (topic and envelope), its message ids get ``.d<k>`` appended and its time
    stamps (envelope and body) :data:`DEVICE_OFFSET_S` × k seconds added."""
    base = [(json.loads(p), t.rsplit("/", 1)[1]) for t, p in device_day]
    out: list[tuple[int, str, bytes]] = []
    for k in range(devices):
        thing = f"{prefix}-{k:05d}"
        shift = DEVICE_OFFSET_S * k
        for env, kind in base:
            copy = {**env, "thing": thing, "id": f"{env['id']}.d{k}"[:64], "ts": env["ts"] + shift}
            copy["body"] = _shifted(env["body"], kind, shift)
            payload = json.dumps(copy, separators=(",", ":"), allow_nan=False).encode()
            out.append((int(copy["ts"] * 1000), f"battwin/{thing}/{kind}", payload))
    out.sort(key=lambda m: m[0])
    yield from out


def _shifted(body: dict[str, Any], kind: str, shift: float) -> dict[str, Any]:
    body = dict(body)
    if kind == "telemetry":
        samples = [{**s, "ts": s["ts"] + shift} for s in telemetry_samples(body)]
        samples_json = json.dumps(samples, separators=(",", ":"), allow_nan=False).encode()
        # as the device sent it: packed when it came packed
        body = json.loads(pack_samples(samples_json, len(samples))) if is_packed(body) else {"samples": samples}
    elif kind == "cycles":
        body["start_ts"] += shift
        body["end_ts"] += shift
    elif "ts" in body:
        body["ts"] += shift
    return body


def _count_items(ddb: Any, table: str) -> int:
    total = 0
    for page in ddb.get_paginator("scan").paginate(TableName=table, Select="COUNT"):
        total += int(page["Count"])
    return total


def run_scale(
    devices: int,
    hours: float = 24.0,
    *,
    workers: int = 4,
    start_ts: float | None = None,
    device_day: list[tuple[str, bytes]] | None = None,
    drain_timeout_s: float = 3600.0,
) -> ScaleResult:
    """``devices`` simulated devices × ``hours`` simulated hours through the local rules runner, the real ingest
    handler on moto and the buffered lake stream (see the module doc)."""
    if devices < 1:
        raise ValueError(f"devices must be at least 1, got {devices}")
    start = start_ts if start_ts is not None else float(int(time.time() // 3600) * 3600 - 3 * 86_400)
    day = device_day if device_day is not None else run_agent(hours, thing="scale-template", start_ts=start)
    template = load_template()
    with LocalAws.running() as aws:
        ingestor = aws.ingestor()
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def ingest(event: dict[str, Any]) -> dict[str, Any]:
            out = ingestor.handle(event).as_dict()
            with lock:
                outcomes[str(out["status"])] += 1
            return out

        sim_now = [start]
        (stream_id, spec), *_ = firehose_streams(template).items()
        transform = aws.lake_transform()
        stream = BufferedFirehose(
            spec, aws.client("s3"), aws.names.bucket, clock=lambda: sim_now[0], transform=transform
        )

        def put(record: bytes) -> None:
            at = json.loads(record).get("rule_received_ms")
            if isinstance(at, int | float):
                with lock:
                    sim_now[0] = max(sim_now[0], at / 1000.0)
            stream.put(record)

        runner = LocalRulesRunner(
            "mqtt://127.0.0.1:1", {"IngestFunction": ingest, stream_id: put}, workers=workers, template=template
        )
        runner.start(subscribe=False)
        by_kind: Counter[str] = Counter()
        t0 = time.perf_counter()
        try:
            for received_ms, topic, payload in fleet_day(day, devices):
                by_kind[topic.rsplit("/", 1)[1]] += 1
                runner.deliver(topic, payload, received_ms)
                while runner.stats()["pending"] > 64 * workers:  # keep the simulated clock near the work
                    time.sleep(0.005)
            if not runner.wait_idle(drain_timeout_s):
                raise TimeoutError(f"the rules runner did not drain within {drain_timeout_s} s")
            stream.flush()
            wall = time.perf_counter() - t0
        finally:
            runner.stop(drain_timeout_s=1.0)
        s3 = aws.client("s3")
        lake: Counter[str] = Counter()
        dead = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.names.bucket):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.startswith("lake/"):
                    lake[parse_partition(key).get("kind", "?")] += 1
                elif key.startswith("dead-letter/"):
                    dead += 1
        ddb = aws.client("dynamodb")
        return ScaleResult(
            devices=devices,
            simulated_hours=hours,
            messages=sum(by_kind.values()),
            messages_by_kind=dict(by_kind),
            outcomes=dict(outcomes),
            lake_objects_by_kind=dict(lake),
            lake_records=stream.records,
            lake_error_objects=stream.error_objects,
            history_items=_count_items(ddb, aws.names.history_table),
            device_state_items=_count_items(ddb, aws.names.device_state_table),
            live_window_items=transform.live_written,
            registered_things=transform.registered,
            dead_letter_objects=dead,
            wall_s=wall,
            workers=workers,
            rules_stats=runner.stats(),
        )
