"""The S3 data lake's layout and record format, shared by the retraining Lambda, the local stack and Glue.

Every kind reaches the lake through the template's ``LakeFirehose`` stream: the Firehose action of the IoT rules
``TelemetryRule``, ``CyclesRule``, ``HealthRule`` and ``AlarmsRule`` (one per kind; its other action invokes the
ingest) puts each message as one record (gzip JSON Lines, one object per partition and buffer of 128 MB or 15
minutes for the whole fleet)::

    <lake prefix>kind=<telemetry|cycles|health|alarms>/dt=YYYY-MM-DD/<stream>-<version>-<time>-<uuid>.gz

One line per message: the envelope as the device sent it plus ``rule_thing`` and ``rule_kind`` (the topic's
thing and kind, without the ``$aws/rules/<rule>/`` prefix of a Basic Ingest topic), ``rule_received_ms`` and
``rule_client_id``. The partition keys come from the record by
:data:`FIREHOSE_PARTITION_JQ` (Firehose's dynamic partitioning; :func:`firehose_partition` is the same in
Python, for the local stack): a record whose kind is not its topic's, or not a lake kind, lands under
``kind=rejected``. Firehose delivers at least once: readers keep one record per (thing, message id)
(:func:`lake_records`; the Athena data sets do the same with ``row_number()``), and only records whose envelope
names the topic's thing (the ingest Lambda dead-letters the others).

``dt`` is the UTC day of the envelope's time stamp. Each kind is one Glue table partitioned by ``dt`` with
partition projection (nothing registers partitions).

Dead letters (anything the ingest Lambda could not store as data, with the reason)::

    <dead-letter prefix>reason=<code>/dt=YYYY-MM-DD/<sha256 of the payload>.json
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

LAKE_KINDS = ("telemetry", "cycles", "health", "alarms")
DEFAULT_LAKE_PREFIX = "lake/"
DEFAULT_DEAD_LETTER_PREFIX = "dead-letter/"


#: Firehose's partition-key query (JQ 1.6) on a lake record: a record whose ``kind`` is a lake kind and the
#: topic's (``rule_kind``) lands under its kind, any other under ``kind=rejected`` (never in another kind's
#: table); one without a numeric ``ts`` goes to the stream's error output
FIREHOSE_PARTITION_JQ = (
    '{kind: (if .kind == .rule_kind and (.kind == "telemetry" or .kind == "cycles" or .kind == "health"'
    ' or .kind == "alarms") then .kind else "rejected" end), dt: (.ts | floor | todate | .[0:10])}'
)


class PartitionError(ValueError):
    """A record Firehose's partition query fails on (Firehose writes it under its error output prefix)."""


def firehose_partition(record: dict[str, Any]) -> dict[str, str]:
    """:data:`FIREHOSE_PARTITION_JQ` evaluated in Python: ``{"kind": …, "dt": "YYYY-MM-DD"}``."""
    ts = record.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise PartitionError(f"ts is not a number: {str(ts)[:40]!r}")
    kind = record.get("kind")
    lake_kind = kind if (kind == record.get("rule_kind") and kind in LAKE_KINDS) else "rejected"
    try:
        return {"kind": str(lake_kind), "dt": utc_day(float(int(ts // 1)))}
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


def partition_prefix(lake_prefix: str, kind: str, day: str | None = None) -> str:
    out = f"{normalise_prefix(lake_prefix)}kind={kind}/"
    if day is not None:
        out += f"dt={day}/"
    return out


def parse_partition(key: str) -> dict[str, str]:
    """``…/kind=cycles/dt=2025-01-02/x.gz`` → {"kind": "cycles", "dt": "2025-01-02"}."""
    out: dict[str, str] = {}
    for part in key.split("/")[:-1]:
        name, sep, value = part.partition("=")
        if sep and name in ("kind", "dt"):
            out[name] = value
    return out


def lake_record(envelope: dict[str, Any], topic_thing: str, topic_kind: str, received_ms: int) -> dict[str, Any]:
    """The record a rule's Firehose action puts for one message (``SELECT *, topic(2) AS rule_thing, topic(3) AS
    rule_kind, timestamp() AS rule_received_ms …``): the envelope as sent plus the topic's parts and the receive
    time (the rule's ``rule_client_id`` aside)."""
    return {**envelope, "rule_thing": topic_thing, "rule_kind": topic_kind, "rule_received_ms": received_ms}


def encode_jsonl_gz(rows: Iterable[dict[str, Any]]) -> bytes:
    """Deterministic bytes (gzip mtime 0): the same rows always give the same object."""
    text = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in rows)
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode_jsonl(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON lines of a lake object, gzip'd (Firehose with ``CompressionFormat: GZIP``) or not (moto's
    Firehose writes records as put). A line that is not a JSON object is skipped (Athena's
    ``ignore.malformed.json`` does the same)."""
    text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    for line in text.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def lake_records(records: Iterable[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    """The records of ``kind`` the Athena data sets keep: the envelope names the topic's thing and kind, and one
    record per (thing, message id) — the first one received (Firehose delivers at least once)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        thing, msg_id = rec.get("thing"), rec.get("id")
        if rec.get("kind") != kind or rec.get("rule_kind", kind) != kind:
            continue
        if not isinstance(thing, str) or not isinstance(msg_id, str) or rec.get("rule_thing", thing) != thing:
            continue
        key = (thing, msg_id)
        seen = best.get(key)
        if seen is None or _received(rec) < _received(seen):
            best[key] = rec
    yield from best.values()


def _received(rec: dict[str, Any]) -> float:
    value = rec.get("rule_received_ms")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("inf")


def flat_row(record: dict[str, Any]) -> dict[str, Any] | None:
    """A lake record of a small kind as one flat row: the body's fields plus ``msg_id``, ``msg_ts``, ``thing``
    and ``simulated`` (the envelope's, unless the body has its own); None if the body is not an object."""
    body = record.get("body")
    if not isinstance(body, dict):
        return None
    row: dict[str, Any] = {"simulated": bool(record.get("simulated", False)), **body}
    row.update({"msg_id": record.get("id"), "msg_ts": record.get("ts"), "thing": record.get("thing")})
    return row


def dead_letter_key(prefix: str, reason: str, payload: bytes, received_at: float) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    return f"{normalise_prefix(prefix)}reason={reason}/dt={utc_day(received_at)}/{digest}.json"
