"""The lake stream's transform Lambda: packed telemetry batches into the rows the lake keeps, and telemetry's one
DynamoDB item (the live window).

Devices send a telemetry batch packed (``{"zsamples": <base64 zlib of the samples array>, "n": …}``, see
:func:`schema.messages.pack_samples`): one 5 KB unit of IoT Core's bill instead of three. The lake keeps the
plain form (``body.samples``, what the Glue tables, the Athena data sets and retraining read), so the
``LakeFirehose`` stream runs this function before its partition query (Firehose processes a record as
deaggregation → Lambda transformation → partition keys). Per record:

* a telemetry record whose body is packed: the same record with ``body`` = ``{"samples": [...]}``;
* anything else: unchanged, so nothing accepted by the rule is lost here and the partition query decides as
  before.

The telemetry rule invokes no other function, so this one also does what the ingest Lambda does for the other
kinds, for telemetry: every telemetry record is checked as the ingest checks a message
(:func:`cloud.ingest.checks.validate_message`); a valid one gives its live-window History item
(:mod:`cloud.live_window`, one write unit; written for the whole invocation with BatchWriteItem), one that fails
a check is dead-lettered with the reason (:mod:`cloud.ingest.dead_letters`) and passed on unchanged, as before.
A live window that cannot be written is logged and counted (metric ``LiveWindowWriteFailures``) and the records
still go on: the lake is the record, the live window a one-day cache of it.

The result keeps the record's trailing separator. A batch of records is answered in Firehose's transformation
format (``recordId``, ``result`` ``Ok``, ``data`` base64), never ``ProcessingFailed``: a record this function
cannot read is passed on as it came.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.aws import (
    LambdaContext,
    batch_get_items,
    client,
    env,
    env_float,
    is_conditional_failure,
    marshal,
    setup_lambda_logging,
)
from cloud.ingest.checks import Rejected, RuleEvent, raw_payload, validate_message
from cloud.ingest.dead_letters import write_dead_letter
from cloud.lake import DEFAULT_DEAD_LETTER_PREFIX
from cloud.live_window import LIVE_KIND, live_item, put_live_items
from cloud.notify import DEFAULT_NAMESPACE, emit_metrics
from schema.messages import PackedBodyError, Telemetry, is_packed, unpacked_body

log = logging.getLogger("battwin.cloud.lake_expand")


def expand_record(data: bytes) -> bytes:
    """One lake record as the rule put it (JSON plus an optional trailing newline) → the record the lake keeps."""
    stripped = data.rstrip(b"\n")
    separator = data[len(stripped) :]
    try:
        record = json.loads(stripped)
    except ValueError:
        return data
    if not isinstance(record, dict) or record.get("kind") != "telemetry":
        return data
    body = record.get("body")
    if not isinstance(body, dict) or not is_packed(body):
        return data
    try:
        record["body"] = unpacked_body(body)
    except PackedBodyError as exc:
        log.info(
            "packed telemetry body does not unpack; kept as sent",
            extra={"reason": str(exc), "thing": str(record.get("thing"))[:128], "id": str(record.get("id"))[:64]},
        )
        return data
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + separator


class TransformSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    #: where the live-window items go (None: none are written; the local stack's lake-only runs)
    history_table: str | None = None
    #: where a thing first heard from by telemetry gets its item (None: not registered)
    device_state_table: str | None = None
    bucket: str | None = None
    dead_letter_prefix: str = DEFAULT_DEAD_LETTER_PREFIX
    raw_ttl_days: float = Field(default=1.0, ge=0.0)
    max_message_bytes: int = Field(default=128 * 1024, ge=256)
    max_clock_skew_s: float = Field(default=86_400.0, gt=0.0)
    metrics_namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TransformSettings:
        e = environ
        return cls(
            history_table=env("HISTORY_TABLE", "", source=e) or None,
            device_state_table=env("DEVICE_STATE_TABLE", "", source=e) or None,
            bucket=env("DATA_BUCKET", "", source=e) or None,
            dead_letter_prefix=env("DEAD_LETTER_PREFIX", DEFAULT_DEAD_LETTER_PREFIX, source=e),
            raw_ttl_days=env_float("RAW_TTL_DAYS", 1.0, source=e),
            max_clock_skew_s=env_float("MAX_CLOCK_SKEW_S", 86_400.0, source=e),
            metrics_namespace=env("METRICS_NAMESPACE", DEFAULT_NAMESPACE, source=e),
        )


class LakeTransform:
    """The transform with its clients (the Lambda handler keeps one per container; the local stack one per
    stack): :meth:`records` is one invocation."""

    def __init__(
        self,
        settings: TransformSettings,
        *,
        dynamodb: Any = None,
        s3: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._ddb = dynamodb
        self._s3 = s3
        self.clock = clock
        #: counts over this transform's life (the local stack and tests read them; a lock: the local stack's
        #: workers share one transform)
        self.live_written = 0
        self.dead_letters = 0
        self.registered = 0
        self._lock = threading.Lock()

    @property
    def ddb(self) -> Any:
        if self._ddb is None:
            self._ddb = client("dynamodb")
        return self._ddb

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = client("s3")
        return self._s3

    def records(self, records: list[bytes]) -> list[bytes]:
        """One invocation's records (as the rules put them) → the records the lake keeps, in the same order; the
        valid telemetry records' live-window items are written, the invalid ones dead-lettered."""
        out: list[bytes] = []
        items: list[dict[str, Any]] = []
        newest: dict[str, dict[str, Any]] = {}  # thing -> its newest live item in this invocation
        for data in records:
            out.append(expand_record(data))
            found = self.checked_live_item(data)
            if found is not None:
                thing, item = found
                items.append(item)
                if thing not in newest or newest[thing]["ts"] < item["ts"]:
                    newest[thing] = item
        st = self.settings
        if items and st.history_table:
            try:
                written = put_live_items(self.ddb, st.history_table, items)
                with self._lock:
                    self.live_written += written
                registered = self._register(newest)
                with self._lock:
                    self.registered += registered
            except Exception as exc:  # the lake's records go on: the live window is a cache of them
                log.error(
                    "live-window items not written (or their things not registered)",
                    extra={"items": len(items), "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
                emit_metrics(st.metrics_namespace, {"LiveWindowWriteFailures": len(items)}, int(self.clock() * 1000))
        return out

    def _register(self, newest: dict[str, dict[str, Any]]) -> int:
        """Give a thing heard from by telemetry alone its DeviceState item (the fleet list is a scan of that table;
        telemetry does not update it otherwise): one BatchGetItem of the invocation's things (0.5 read units
        each), a conditional put for each one missing; the number created."""
        table = self.settings.device_state_table
        if not table or not newest:
            return 0
        things = sorted(newest)
        keys = [{"thing": {"S": t}} for t in things]
        present = {i["thing"]["S"] for i in batch_get_items(self.ddb, table, keys, projection="thing")}
        created = 0
        for thing in things:
            if thing in present:
                continue
            item = newest[thing]
            state = {
                "thing": thing,
                "first_seen": item["ts"],
                "last_seen": item["ts"],
                "last_kind": LIVE_KIND,
                "last_message_id": item["id"],
                "simulated": item["simulated"],
                "updated_at": item["received_at"],
                "last_heard": item["received_at"],
            }
            try:
                self.ddb.put_item(
                    TableName=table, Item=marshal(state), ConditionExpression="attribute_not_exists(thing)"
                )
                created += 1
            except Exception as exc:
                if not is_conditional_failure(exc):
                    raise
        return created

    def checked_live_item(self, data: bytes) -> tuple[str, dict[str, Any]] | None:
        """The record's thing and live-window item if it is valid telemetry; a telemetry record that fails a check
        is dead-lettered (None)."""
        st = self.settings
        if not st.history_table:
            return None
        try:
            event = json.loads(data)
        except ValueError:
            return None
        if not isinstance(event, dict) or event.get("rule_kind") != LIVE_KIND:
            return None  # another kind's record: its rule's ingest Lambda checks and stores it
        try:
            meta = RuleEvent.model_validate(event)
        except ValueError:
            return None
        received_at = float(meta.rule_received_ms) / 1000.0 if meta.rule_received_ms is not None else self.clock()
        raw = raw_payload(event, meta) or b""
        try:
            envelope, body = validate_message(
                raw,
                meta,
                received_at,
                max_message_bytes=st.max_message_bytes,
                max_clock_skew_s=st.max_clock_skew_s,
            )
        except Rejected as rej:
            if st.bucket:
                write_dead_letter(
                    self.s3,
                    st.bucket,
                    st.dead_letter_prefix,
                    reason=rej.reason,
                    detail=rej.detail,
                    raw=raw,
                    received_at=received_at,
                    meta=meta,
                    msg_id=rej.msg_id,
                )
                with self._lock:
                    self.dead_letters += 1
                emit_metrics(st.metrics_namespace, {"DeadLetters": 1}, int(self.clock() * 1000), reason=rej.reason)
            return None
        if not isinstance(body, Telemetry):
            return None
        return envelope.thing, live_item(envelope, body, received_at, st.raw_ttl_days)


_CACHE: dict[str, LakeTransform] = {}


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Firehose's data-transformation call: ``{"records": [{"recordId", "data"}]}`` → the transformed records."""
    setup_lambda_logging()
    settings = TransformSettings.from_env()
    transform = _CACHE.get("transform")
    if transform is None or transform.settings != settings:  # one per container; rebuilt if the env changed
        transform = _CACHE["transform"] = LakeTransform(settings)
    return transform_event(transform, event)


def transform_event(transform: LakeTransform, event: dict[str, Any]) -> dict[str, Any]:
    """One Firehose transformation event through ``transform``, answered in Firehose's format."""
    out: list[dict[str, Any]] = []
    readable: list[tuple[int, bytes]] = []
    for rec in event.get("records") or []:
        raw = rec.get("data", "")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError, TypeError):
            out.append({"recordId": rec.get("recordId"), "result": "Ok", "data": raw})
            continue
        readable.append((len(out), data))
        out.append({"recordId": rec.get("recordId"), "result": "Ok", "data": raw})
    new = transform.records([d for _, d in readable])
    expanded = 0
    for (i, data), rec in zip(readable, new, strict=True):
        expanded += rec is not data
        out[i]["data"] = base64.b64encode(rec).decode()
    log.info("lake records transformed", extra={"records": len(out), "expanded": expanded})
    return {"records": out}
