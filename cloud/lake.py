"""The S3 data lake's layout and record format, shared by the ingest Lambda, the retraining Lambda and Glue.

Cycles, health and alarms (the ingest Lambda; JSON Lines, gzip; one object per device message, named by the
message id and written only if absent, so a re-delivery stores nothing new)::

    <lake prefix>kind=<cycles|health|alarms>/dt=YYYY-MM-DD/thing=<thing>/<message id>.jsonl.gz

Rows are flat for Athena: the body's own fields plus ``msg_id``, ``msg_ts`` (envelope time), ``thing`` and
``received_at`` (cloud time); cycle rows repeat ``index`` as ``cycle``; alarm ``details`` are a JSON string
``details_json``.

Telemetry (the template's ``LakeFirehose`` stream, fed by the ``TelemetryLakeRule`` IoT rule; gzip JSON
Lines, one object per partition and buffer of 128 MB or 15 minutes for the whole fleet)::

    <lake prefix>kind=telemetry/dt=YYYY-MM-DD/<stream>-<version>-<time>-<uuid>.gz

One line per message: the envelope as the device sent it plus ``rule_thing`` (the topic's thing) and
``rule_received_ms``. The partition keys come from the record by :data:`FIREHOSE_PARTITION_JQ` (Firehose's
dynamic partitioning; :func:`firehose_partition` is the same in Python, for the local stack).

``dt`` is the UTC day of the envelope's time stamp. Each kind is one Glue table partitioned by ``dt`` with
partition projection (nothing registers partitions; a ``thing=`` folder under a day is read as part of it).

Dead letters (anything that could not be stored as data, with the reason)::

    <dead-letter prefix>reason=<code>/dt=YYYY-MM-DD/<sha256 of the payload>.json
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from schema.messages import Alarm, CycleRecord, Envelope, Message, Telemetry

LAKE_KINDS = ("telemetry", "cycles", "health", "alarms")
DEFAULT_LAKE_PREFIX = "lake/"
DEFAULT_DEAD_LETTER_PREFIX = "dead-letter/"


#: Firehose's partition-key query (JQ 1.6) on a telemetry record; a record whose ``kind`` is not telemetry
#: lands under ``kind=rejected`` (never in another kind's table), one without a numeric ``ts`` in the stream's
#: error output
FIREHOSE_PARTITION_JQ = (
    '{kind: (if .kind == "telemetry" then "telemetry" else "rejected" end), dt: (.ts | floor | todate | .[0:10])}'
)


class PartitionError(ValueError):
    """A record Firehose's partition query fails on (Firehose writes it under its error output prefix)."""


def firehose_partition(record: dict[str, Any]) -> dict[str, str]:
    """:data:`FIREHOSE_PARTITION_JQ` evaluated in Python: ``{"kind": …, "dt": "YYYY-MM-DD"}``."""
    ts = record.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise PartitionError(f"ts is not a number: {str(ts)[:40]!r}")
    kind = "telemetry" if record.get("kind") == "telemetry" else "rejected"
    try:
        return {"kind": kind, "dt": utc_day(float(int(ts // 1)))}
    except (OverflowError, OSError, ValueError) as exc:
        raise PartitionError(f"ts out of range: {ts!r}") from exc


def firehose_prefix(template: str, keys: dict[str, str]) -> str:
    """A Firehose ``Prefix`` with its ``!{partitionKeyFromQuery:<name>}`` placeholders filled in."""
    out = template
    for name, value in keys.items():
        out = out.replace(f"!{{partitionKeyFromQuery:{name}}}", value)
    if "!{" in out:
        raise PartitionError(f"the prefix {template!r} has placeholders the keys {sorted(keys)} do not fill")
    return out


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def partition_prefix(lake_prefix: str, kind: str, day: str | None = None, thing: str | None = None) -> str:
    out = f"{normalise_prefix(lake_prefix)}kind={kind}/"
    if day is not None:
        out += f"dt={day}/"
        if thing is not None:
            out += f"thing={thing}/"
    return out


def lake_key(lake_prefix: str, kind: str, ts: float, thing: str, msg_id: str) -> str:
    return f"{partition_prefix(lake_prefix, kind, utc_day(ts), thing)}{msg_id}.jsonl.gz"


def parse_partition(key: str) -> dict[str, str]:
    """``…/kind=cycles/dt=2025-01-02/thing=t1/x.jsonl.gz`` → {"kind": "cycles", "dt": …, "thing": "t1"}."""
    out: dict[str, str] = {}
    for part in key.split("/")[:-1]:
        name, sep, value = part.partition("=")
        if sep and name in ("kind", "dt", "thing"):
            out[name] = value
    return out


def lake_rows(envelope: Envelope, body: Message, received_at: float) -> list[dict[str, Any]]:
    """The flat Athena rows of one validated message."""
    base = {"msg_id": envelope.id, "msg_ts": envelope.ts, "thing": envelope.thing, "received_at": received_at}
    if isinstance(body, Telemetry):
        return [{**s.model_dump(mode="json"), "temperature_c": s.temperature_c, **base} for s in body.samples]
    row: dict[str, Any] = {**body.model_dump(mode="json"), **base}
    if isinstance(body, CycleRecord):
        row["cycle"] = body.index
    if isinstance(body, Alarm):
        row["details_json"] = json.dumps(row.pop("details"), separators=(",", ":"), sort_keys=True)
    return [row]


def encode_jsonl_gz(rows: Iterable[dict[str, Any]]) -> bytes:
    """Deterministic bytes (gzip mtime 0): the same rows always give the same object."""
    text = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in rows)
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode_jsonl_gz(data: bytes) -> Iterator[dict[str, Any]]:
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


def dead_letter_key(prefix: str, reason: str, payload: bytes, received_at: float) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    return f"{normalise_prefix(prefix)}reason={reason}/dt={utc_day(received_at)}/{digest}.json"
