"""Ingest Lambda: one device message from an IoT rule → History + DeviceState (DynamoDB) + the S3 data lake.

The IoT rules of the template hand over the raw payload, base64-encoded, with the topic's parts, so that a
payload that is not JSON still reaches this function (and is dead-lettered with the reason) instead of
failing in the rule::

    SELECT encode(*, 'base64') AS payload_b64, topic() AS rule_topic, topic(2) AS rule_thing,
           topic(3) AS rule_kind, timestamp() AS rule_received_ms, clientid() AS rule_client_id
    FROM 'battwin/+/telemetry'

An event that is the envelope itself with ``rule_*`` fields added (``SELECT *, topic(2) AS rule_thing …``)
is accepted too.

Per message: size limit → JSON → :class:`~schema.messages.Envelope` → the topic's thing and kind must
match the envelope's → body model → store. Anything that fails a check is written to the dead-letter prefix
with the reason and the original payload (and the invocation succeeds: retrying would not help). Storing, in
this order, every step idempotent:

1. the lake object, under a key made of the message id, written only if absent (``If-None-Match: *``: the
   first delivery's bytes are kept);
2. Glue partition registration (once per partition and container; failures are logged, never fatal);
3. DeviceState updates, each conditional on being newer than what is stored (a repeat changes nothing);
4. the History item, conditional on its key (thing, kind, time, id) not existing: this put decides — a
   message whose item exists is a duplicate, and its earlier delivery stored everything.

An AWS error in 1–4 raises, so Lambda's asynchronous retries (and then the on-failure destination, an SQS
queue) apply; a retry redoes the steps that are not done yet and the History put last, so a valid message
is never dropped and never stored twice. (The History put comes last rather than first as a "claim" so
that a message costs one DynamoDB write of its size, not two: writes are billed by item size.)
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.aws import (
    LambdaContext,
    client,
    env,
    env_float,
    env_int,
    error_code,
    is_conditional_failure,
    marshal,
    marshal_value,
    request_id,
    setup_lambda_logging,
)
from cloud.lake import (
    DEFAULT_DEAD_LETTER_PREFIX,
    DEFAULT_LAKE_PREFIX,
    dead_letter_key,
    encode_jsonl_gz,
    lake_key,
    lake_rows,
    partition_prefix,
    utc_day,
)
from cloud.tables import history_pk, history_sk
from schema.messages import BODY_TYPES, Alarm, CycleRecord, Envelope, Health, Message, Telemetry

log = logging.getLogger("battwin.cloud.ingest")

#: AWS IoT Core's own limit for an MQTT message
IOT_MAX_MESSAGE_BYTES = 128 * 1024
Status = Literal["stored", "duplicate", "dead_letter"]


class IngestSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    history_table: str
    device_state_table: str
    bucket: str
    lake_prefix: str = DEFAULT_LAKE_PREFIX
    dead_letter_prefix: str = DEFAULT_DEAD_LETTER_PREFIX
    raw_ttl_days: float = Field(default=30.0, ge=0.0)
    max_message_bytes: int = Field(default=IOT_MAX_MESSAGE_BYTES, ge=256)
    max_clock_skew_s: float = Field(default=86_400.0, gt=0.0)
    glue_database: str | None = None

    @classmethod
    def from_env(cls) -> IngestSettings:
        return cls(
            history_table=env("HISTORY_TABLE"),
            device_state_table=env("DEVICE_STATE_TABLE"),
            bucket=env("DATA_BUCKET"),
            lake_prefix=env("LAKE_PREFIX", DEFAULT_LAKE_PREFIX),
            dead_letter_prefix=env("DEAD_LETTER_PREFIX", DEFAULT_DEAD_LETTER_PREFIX),
            raw_ttl_days=env_float("RAW_TTL_DAYS", 30.0),
            max_message_bytes=env_int("MAX_MESSAGE_BYTES", IOT_MAX_MESSAGE_BYTES),
            max_clock_skew_s=env_float("MAX_CLOCK_SKEW_S", 86_400.0),
            glue_database=env("GLUE_DATABASE", "") or None,
        )


class RuleEvent(BaseModel):
    """What the IoT rule adds to (or sends instead of) the envelope."""

    model_config = ConfigDict(extra="allow")

    payload_b64: str | None = None
    rule_topic: str | None = None
    rule_thing: str | None = None
    rule_kind: str | None = None
    rule_received_ms: int | float | None = None
    rule_client_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Status
    id: str | None = None
    thing: str | None = None
    kind: str | None = None
    reason: str | None = None
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Rejected(Exception):
    """A message that cannot be stored as data (→ dead letter)."""

    def __init__(self, reason: str, detail: str, msg_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.msg_id = msg_id


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Ingestor:
    """The ingest logic with its clients (the Lambda handler keeps one per container)."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        dynamodb: Any = None,
        s3: Any = None,
        glue: Any = None,
    ) -> None:
        self.settings = settings
        self.ddb = dynamodb or client("dynamodb")
        self.s3 = s3 or client("s3")
        self._glue = glue
        self._partitions: set[tuple[str, str, str]] = set()
        self._glue_tables: dict[str, dict[str, Any]] = {}

    @property
    def glue(self) -> Any:
        if self._glue is None:
            self._glue = client("glue")
        return self._glue

    # -- entry ------------------------------------------------------------------------------------
    def handle(self, event: dict[str, Any], now: float | None = None) -> Outcome:
        received_at = time.time() if now is None else now
        try:
            meta = RuleEvent.model_validate(event)
        except ValidationError as exc:
            event_bytes = json.dumps(event, default=str).encode()
            return self._dead_letter("bad_event", _summarise(exc), event_bytes, received_at, None)
        if meta.rule_received_ms is not None:
            received_at = float(meta.rule_received_ms) / 1000.0
        raw = self._raw_payload(event, meta)
        if raw is None:
            return self._dead_letter(
                "bad_event", "payload_b64 is not valid base64", str(meta.payload_b64).encode(), received_at, meta
            )
        try:
            envelope, body = self._validate(raw, meta, received_at)
        except Rejected as rej:
            return self._dead_letter(rej.reason, rej.detail, raw, received_at, meta, rej.msg_id)
        return self._store(envelope, body, received_at)

    @staticmethod
    def _raw_payload(event: dict[str, Any], meta: RuleEvent) -> bytes | None:
        if meta.payload_b64 is not None:
            try:
                return base64.b64decode(meta.payload_b64, validate=True)
            except (binascii.Error, ValueError):
                return None
        inline = {k: v for k, v in event.items() if not k.startswith("rule_")}
        return json.dumps(inline, separators=(",", ":"), default=str).encode()

    # -- checks -----------------------------------------------------------------------------------
    def _validate(self, raw: bytes, meta: RuleEvent, received_at: float) -> tuple[Envelope, Message]:
        limit = self.settings.max_message_bytes
        if len(raw) > limit:
            raise Rejected("oversized", f"{len(raw)} bytes > limit {limit}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Rejected("not_json", f"{type(exc).__name__}: {exc}"[:500]) from None
        if not isinstance(data, dict):
            raise Rejected("not_json", f"payload is a JSON {type(data).__name__}, not an object")
        msg_id = data.get("id") if isinstance(data.get("id"), str) else None
        try:
            envelope = Envelope.model_validate(data)
        except ValidationError as exc:
            raise Rejected("invalid_envelope", _summarise(exc), msg_id) from None
        if meta.rule_thing is None or meta.rule_kind is None:
            raise Rejected("missing_topic", "the rule passed no topic thing/kind to check the envelope against", msg_id)
        if envelope.thing != meta.rule_thing:
            raise Rejected(
                "thing_mismatch", f"envelope thing {envelope.thing!r} != topic thing {meta.rule_thing!r}", msg_id
            )
        if envelope.kind != meta.rule_kind:
            raise Rejected("kind_mismatch", f"envelope kind {envelope.kind!r} != topic kind {meta.rule_kind!r}", msg_id)
        if envelope.ts > received_at + self.settings.max_clock_skew_s:
            raise Rejected(
                "clock_skew",
                f"envelope time {envelope.ts} is more than {self.settings.max_clock_skew_s} s ahead",
                msg_id,
            )
        try:
            body = BODY_TYPES[envelope.kind].model_validate(envelope.body)
        except ValidationError as exc:
            raise Rejected("invalid_body", _summarise(exc), msg_id) from None
        return envelope, body

    def _dead_letter(
        self,
        reason: str,
        detail: str,
        raw: bytes,
        received_at: float,
        meta: RuleEvent | None,
        msg_id: str | None = None,
    ) -> Outcome:
        key = dead_letter_key(self.settings.dead_letter_prefix, reason, raw, received_at)
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        record = {
            "reason": reason,
            "detail": detail,
            "message_id": msg_id,
            "topic": meta.rule_topic if meta else None,
            "topic_thing": meta.rule_thing if meta else None,
            "client_id": meta.rule_client_id if meta else None,
            "received_at": received_at,
            "size_bytes": len(raw),
            "payload": text,
            "payload_b64": None if text is not None else base64.b64encode(raw).decode(),
        }
        self.s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=json.dumps(record, separators=(",", ":")).encode(),
            ContentType="application/json",
        )
        log.warning(
            "message dead-lettered",
            extra={
                "reason": reason,
                "detail": detail[:300],
                "message_id": msg_id,
                "topic": record["topic"],
                "key": key,
            },
        )
        thing = meta.rule_thing if meta else None
        return Outcome("dead_letter", id=msg_id, thing=thing, reason=reason, key=key)

    # -- storing ----------------------------------------------------------------------------------
    def _store(self, envelope: Envelope, body: Message, received_at: float) -> Outcome:
        st = self.settings
        key = lake_key(st.lake_prefix, envelope.kind, envelope.ts, envelope.thing, envelope.id)
        try:
            self.s3.put_object(
                Bucket=st.bucket,
                Key=key,
                Body=encode_jsonl_gz(lake_rows(envelope, body, received_at)),
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
                IfNoneMatch="*",
            )
        except Exception as exc:
            if error_code(exc) not in ("PreconditionFailed", "412"):
                raise
            # the object exists: written by an earlier attempt at this message (or its first delivery); kept
        self._ensure_partition(envelope.kind, utc_day(envelope.ts), envelope.thing)
        self._update_state(envelope, body, received_at)
        item: dict[str, Any] = {
            "pk": history_pk(envelope.thing, envelope.kind),
            "sk": history_sk(envelope.ts, envelope.id),
            "thing": envelope.thing,
            "kind": envelope.kind,
            "ts": envelope.ts,
            "id": envelope.id,
            "simulated": envelope.simulated,
            "received_at": received_at,
            "body": json.dumps(envelope.body, separators=(",", ":"), allow_nan=False),
        }
        if isinstance(body, Telemetry):
            item["n_samples"] = len(body.samples)
            if st.raw_ttl_days > 0:
                item["expires_at"] = int(envelope.ts + st.raw_ttl_days * 86_400.0)
        try:
            self.ddb.put_item(
                TableName=st.history_table, Item=marshal(item), ConditionExpression="attribute_not_exists(pk)"
            )
        except Exception as exc:
            if is_conditional_failure(exc):
                log.info("duplicate message ignored", extra={"message_id": envelope.id, "thing": envelope.thing})
                return Outcome("duplicate", id=envelope.id, thing=envelope.thing, kind=envelope.kind)
            raise
        log.debug("message stored", extra={"message_id": envelope.id, "thing": envelope.thing, "kind": envelope.kind})
        return Outcome("stored", id=envelope.id, thing=envelope.thing, kind=envelope.kind, key=key)

    def _conditional_update(self, **kwargs: Any) -> bool:
        """An UpdateItem whose condition may fail (older data): True if applied."""
        try:
            self.ddb.update_item(TableName=self.settings.device_state_table, **kwargs)
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def _update_state(self, envelope: Envelope, body: Message, received_at: float) -> None:
        key = {"thing": {"S": envelope.thing}}
        ts = marshal_value(envelope.ts)
        sets = [
            "last_seen = :ts",
            "last_kind = :kind",
            "last_message_id = :id",
            "simulated = :sim",
            "updated_at = :now",
            "first_seen = if_not_exists(first_seen, :ts)",
        ]
        values: dict[str, Any] = {
            ":ts": ts,
            ":kind": {"S": envelope.kind},
            ":id": {"S": envelope.id},
            ":sim": {"BOOL": envelope.simulated},
            ":now": marshal_value(received_at),
        }
        if isinstance(body, Telemetry):
            sets.append("latest_sample = :sample")
            values[":sample"] = marshal_value(body.samples[-1].model_dump(mode="json"))
        self._conditional_update(
            Key=key,
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="attribute_not_exists(last_seen) OR last_seen < :ts",
            ExpressionAttributeValues=values,
        )
        if isinstance(body, Health):
            self._conditional_update(
                Key=key,
                UpdateExpression="SET health = :h, health_ts = :ts",
                ConditionExpression="attribute_not_exists(health_ts) OR health_ts < :ts",
                ExpressionAttributeValues={":h": marshal_value(body.model_dump(mode="json")), ":ts": ts},
            )
        elif isinstance(body, CycleRecord):
            self._conditional_update(
                Key=key,
                UpdateExpression="SET last_cycle = :c, last_cycle_ts = :ts",
                ConditionExpression="attribute_not_exists(last_cycle_ts) OR last_cycle_ts < :ts",
                ExpressionAttributeValues={":c": marshal_value(body.model_dump(mode="json")), ":ts": ts},
            )
        elif isinstance(body, Alarm):
            self._update_alarm(key, body)

    def _update_alarm(self, key: dict[str, Any], alarm: Alarm) -> None:
        kwargs: dict[str, Any] = {
            "Key": key,
            "UpdateExpression": "SET alarms.#code = :a",
            "ConditionExpression": "attribute_not_exists(alarms.#code) OR alarms.#code.ts < :ts",
            "ExpressionAttributeNames": {"#code": alarm.code},
            "ExpressionAttributeValues": {
                ":a": marshal_value(alarm.model_dump(mode="json")),
                ":ts": marshal_value(alarm.ts),
            },
        }
        try:
            self._conditional_update(**kwargs)
        except Exception as exc:
            if error_code(exc) != "ValidationException":
                raise
            # the item has no alarms map yet: create it (if still missing), then apply
            self.ddb.update_item(
                TableName=self.settings.device_state_table,
                Key=key,
                UpdateExpression="SET alarms = if_not_exists(alarms, :empty)",
                ExpressionAttributeValues={":empty": {"M": {}}},
            )
            self._conditional_update(**kwargs)

    def _ensure_partition(self, kind: str, day: str, thing: str) -> None:
        st = self.settings
        if not st.glue_database or (kind, day, thing) in self._partitions:
            return
        try:
            table = self._glue_tables.get(kind)
            if table is None:
                table = self.glue.get_table(DatabaseName=st.glue_database, Name=kind)["Table"]
                self._glue_tables[kind] = table
            sd = copy.deepcopy(table["StorageDescriptor"])
            sd["Location"] = f"s3://{st.bucket}/{partition_prefix(st.lake_prefix, kind, day, thing)}"
            try:
                self.glue.create_partition(
                    DatabaseName=st.glue_database,
                    TableName=kind,
                    PartitionInput={"Values": [day, thing], "StorageDescriptor": sd},
                )
            except Exception as exc:
                if error_code(exc) != "AlreadyExistsException":
                    raise
            self._partitions.add((kind, day, thing))
        except Exception as exc:  # the data is in S3: MSCK REPAIR TABLE or the next message registers it
            log.error(
                "glue partition registration failed",
                extra={"kind": kind, "dt": day, "thing": thing, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )


_CACHE: dict[str, Ingestor] = {}


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Lambda entry point (``cloud.ingest.handler.handler``)."""
    setup_lambda_logging()
    settings = IngestSettings.from_env()
    ingestor = _CACHE.get("ingestor")
    if ingestor is None or ingestor.settings != settings:  # one per container; rebuilt if the env changed
        ingestor = _CACHE["ingestor"] = Ingestor(settings)
    outcome = ingestor.handle(event)
    if outcome.status != "stored":
        log.info("ingest outcome", extra={**outcome.as_dict(), "request_id": request_id(context)})
    return outcome.as_dict()
