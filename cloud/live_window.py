"""The telemetry live window in History: one small item per telemetry batch, the cloud's only DynamoDB write of
telemetry (written by the lake stream's transform, :mod:`cloud.lake_expand.handler`; no ingest Lambda runs on the
telemetry path), and what the readers derive from it (the device's latest sample, when it was last heard from).

The item (:func:`live_item`): key ``pk`` = ``<thing>#telemetry``, ``sk`` = ``<ms>#<id>`` as every History item
(:mod:`cloud.tables`), a compact body (:func:`live_window`: at most :data:`LIVE_WINDOW_SAMPLES` samples of the
batch with the fields the dashboard's live chart draws, and the last sample's source), ``expires_at`` (TTL,
``RAW_TTL_DAYS``). It is kept under 1 KB (one write unit) and has **no** ``thing`` attribute, so it is not in the
``by_thing_time`` index (which would cost a second write unit per batch): the history of every kind (no ``kind``
in the API query) lists cycles, health and alarms; telemetry is read by kind. The full batch is in the lake.

A repeat of a batch (a redelivery, a transform retried by Firehose) writes the same item under the same key:
idempotent without a condition (a conditional put that fails is billed as a write too).
"""

from __future__ import annotations

import json
import time
from typing import Any

from cloud.aws import marshal, unmarshal
from cloud.tables import history_pk, history_sk
from schema.messages import Envelope, Telemetry

#: samples of a telemetry batch kept in its live-window item (evenly spaced, the last one always among them)
LIVE_WINDOW_SAMPLES = 6
#: the compact body's bound: with a 32-character thing name the item stays within one write unit (1 KB)
LIVE_BODY_MAX_BYTES = 760
#: the sample fields the dashboard's live chart draws (cloud/dashboard/views.py ``live_series``)
LIVE_FIELDS = ("ts", "voltage_v", "current_a", "temperatures_c", "soc_pct", "soc_est_pct")
#: the kind whose items these are
LIVE_KIND = "telemetry"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def live_window(
    body: Telemetry, max_samples: int = LIVE_WINDOW_SAMPLES, max_bytes: int = LIVE_BODY_MAX_BYTES
) -> dict[str, Any]:
    """A telemetry batch as its compact body: ``{"samples": [...], "of": n, "source_id": ...}`` with at most
    ``max_samples`` samples of the batch (evenly spaced, ending with the last) and only :data:`LIVE_FIELDS`, fewer
    when the body would pass ``max_bytes`` (so that the item stays one write unit); ``source_id`` is the last
    sample's. The full batch is in the lake."""
    n = len(body.samples)
    window: dict[str, Any] = {"samples": [], "of": n}
    for k in range(max(1, max_samples), 0, -1):
        step = max(1, -(-n // k))
        picked = [body.samples[i] for i in range(n - 1, -1, -step)][::-1]
        # as on the wire, a reading the device does not have is left out (battwin's SoC before its first anchor)
        window = {
            "samples": [
                {f: v for f, v in s.model_dump(mode="json", exclude_none=True).items() if f in LIVE_FIELDS}
                for s in picked
            ],
            "of": n,
            "source_id": body.samples[-1].source_id,
        }
        if len(_json(window)) <= max_bytes:
            break
    return window


def live_item(envelope: Envelope, body: Telemetry, received_at: float, ttl_days: float) -> dict[str, Any]:
    """The History item of one telemetry batch (module docstring), plain JSON types (:func:`cloud.aws.marshal`)."""
    item: dict[str, Any] = {
        "pk": history_pk(envelope.thing, LIVE_KIND),
        "sk": history_sk(envelope.ts, envelope.id),
        "kind": LIVE_KIND,
        "ts": envelope.ts,
        "id": envelope.id,
        "simulated": envelope.simulated,
        "received_at": received_at,
        "body": _json(live_window(body)),
        "n_samples": len(body.samples),
    }
    if ttl_days > 0:
        item["expires_at"] = int(envelope.ts + ttl_days * 86_400.0)
    return item


def put_live_items(ddb: Any, table: str, items: list[dict[str, Any]], attempts: int = 8) -> int:
    """Write ``items`` (:func:`live_item`) with BatchWriteItem, 25 at a time, retrying what DynamoDB leaves
    unprocessed; the number written (raises ``RuntimeError`` if some are still unprocessed after ``attempts``)."""
    # a batch may not hold the same key twice: the newest delivery of a key wins (they are the same batch)
    unique = list({(i["pk"], i["sk"]): i for i in items}.values())
    written = 0
    for start in range(0, len(unique), 25):
        chunk = unique[start : start + 25]
        request: dict[str, Any] = {table: [{"PutRequest": {"Item": marshal(i)}} for i in chunk]}
        for attempt in range(attempts):
            resp = ddb.batch_write_item(RequestItems=request)
            request = resp.get("UnprocessedItems") or {}
            if not request:
                break
            time.sleep(min(0.05 * 2**attempt, 1.0))
        if request:
            left = len(request.get(table, []))
            raise RuntimeError(f"BatchWriteItem left {left} live-window items unprocessed after {attempts} attempts")
        written += len(chunk)
    return written


def newest_live_item(ddb: Any, table: str, thing: str) -> dict[str, Any] | None:
    """The thing's newest live-window item (plain JSON types), None if it has none (or they expired)."""
    resp = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": history_pk(thing, LIVE_KIND)}},
        ScanIndexForward=False,
        Limit=1,
    )
    items = resp.get("Items") or []
    return unmarshal(items[0]) if items else None


def latest_sample(item: dict[str, Any]) -> dict[str, Any] | None:
    """The batch's last sample as its live-window item keeps it (the live-chart fields and ``source_id``)."""
    try:
        body = json.loads(item.get("body") or "{}")
    except ValueError:
        return None
    samples = body.get("samples") if isinstance(body, dict) else None
    if not (isinstance(samples, list) and samples and isinstance(samples[-1], dict)):
        return None
    last = dict(samples[-1])
    if isinstance(body.get("source_id"), str):
        last["source_id"] = body["source_id"]
    return last
