"""Ingest Lambda: one device message from an IoT rule → DeviceState and a small History item (DynamoDB only: the
S3 data lake is fed by the rules' Firehose actions, never by this function).

The IoT rules of the template (one per kind, whose other action puts the same record to the lake's Firehose
stream; one rule because a Basic Ingest message reaches only the rule it names) hand over the envelope itself
with the topic's parts added::

    SELECT *, topic(2) AS rule_thing, topic(3) AS rule_kind, timestamp() AS rule_received_ms,
           clientid() AS rule_client_id FROM 'battwin/+/telemetry'

so a payload that is not a JSON object fails in the rule, whose S3 error action writes it under
``dead-letter/rule-errors/``. An event with the raw payload base64-encoded (``encode(*, 'base64') AS
payload_b64``, ``topic() AS rule_topic`` …) is accepted too. An IoT lifecycle event (``clientId`` and
``eventType``, from the presence rule) updates the thing's connection state in DeviceState
(:meth:`Ingestor._presence`).

Per message (the checks: :mod:`cloud.ingest.checks`): size limit → JSON →
:class:`~schema.messages.Envelope` → the topic's thing and kind must match the envelope's → body model
→ store. Anything that fails a check is written to the dead-letter prefix
with the reason and the original payload (and the invocation succeeds: retrying would not help). Storing, in
this order, every step idempotent (nothing goes to the lake from here: each kind's rule hands the message to
the lake's Firehose stream, buffered and partitioned by kind and date, ``cloud/README.md``; **raw telemetry
never passes through here into DynamoDB**):

1. DeviceState updates (:mod:`cloud.ingest.device_state`; telemetry: the latest sample), each conditional on
   being newer than what is stored (a repeat changes nothing); an alarm that began an episode is published to
   the operators' SNS topic once (:mod:`cloud.notify`);
2. the History item, conditional on its key (thing, kind, time, id) not existing: this put decides — a
   message whose item exists is a duplicate, and its earlier delivery stored everything. For telemetry the item
   is a compact live window (:func:`live_window`: at most :data:`LIVE_WINDOW_SAMPLES` samples of the batch, the
   fields the dashboard's live chart draws; under 1 KB, one write unit) that expires after ``RAW_TTL_DAYS``.

An AWS error in 1–2 raises, so Lambda's asynchronous retries (and then the on-failure destination, an SQS
queue) apply; a retry redoes the steps that are not done yet and the History put last, so a valid message
is never dropped and never stored twice. (The History put comes last rather than first as a "claim" so
that a message costs one DynamoDB write of its size, not two: writes are billed by item size.)
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.aws import (
    LambdaContext,
    client,
    env,
    env_float,
    env_int,
    is_conditional_failure,
    marshal,
    request_id,
    setup_lambda_logging,
)
from cloud.ingest.checks import Rejected, RuleEvent, raw_payload, summarise_errors, validate_message
from cloud.ingest.device_state import AlarmChange, DeviceStateWriter
from cloud.lake import DEFAULT_DEAD_LETTER_PREFIX, dead_letter_key
from cloud.notify import DEFAULT_NAMESPACE, NoticeBook, Notifier, emit_metrics, notifies
from cloud.tables import history_pk, history_sk
from schema.messages import Alarm, Envelope, Message, Telemetry

log = logging.getLogger("battwin.cloud.ingest")

#: AWS IoT Core's own limit for an MQTT message
IOT_MAX_MESSAGE_BYTES = 128 * 1024
Status = Literal["stored", "duplicate", "dead_letter", "presence"]


#: samples of a telemetry batch kept in its History item (evenly spaced, the last one always among them)
LIVE_WINDOW_SAMPLES = 6
#: the compact body's bound: with a 32-character thing name the History item stays within one write unit (1 KB)
LIVE_BODY_MAX_BYTES = 720
#: the sample fields the dashboard's live chart draws (cloud/dashboard/views.py ``live_series``)
LIVE_FIELDS = ("ts", "voltage_v", "current_a", "temperatures_c", "soc_pct", "soc_est_pct")


def live_window(
    body: Telemetry, max_samples: int = LIVE_WINDOW_SAMPLES, max_bytes: int = LIVE_BODY_MAX_BYTES
) -> dict[str, Any]:
    """A telemetry batch as its compact History body: ``{"samples": [...], "of": n}`` with at most
    ``max_samples`` samples of the batch (evenly spaced, ending with the last) and only :data:`LIVE_FIELDS`, fewer
    when the body would pass ``max_bytes`` (so that the item stays one DynamoDB write unit); the full batch is in
    the lake (Firehose)."""
    n = len(body.samples)
    window: dict[str, Any] = {"samples": [], "of": n}
    for k in range(max(1, max_samples), 0, -1):
        step = max(1, -(-n // k))
        picked = [body.samples[i] for i in range(n - 1, -1, -step)][::-1]
        # as on the wire, a reading the device does not have is left out (battwin's SoC before its first anchor)
        window = {
            "samples": [
                {k: v for k, v in s.model_dump(mode="json", exclude_none=True).items() if k in LIVE_FIELDS}
                for s in picked
            ],
            "of": n,
        }
        if len(json.dumps(window, separators=(",", ":"), allow_nan=False)) <= max_bytes:
            break
    return window


class IngestSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    history_table: str
    device_state_table: str
    bucket: str
    dead_letter_prefix: str = DEFAULT_DEAD_LETTER_PREFIX
    #: days a telemetry message's compact live-window item stays in History (0: no expiry)
    raw_ttl_days: float = Field(default=1.0, ge=0.0)
    max_message_bytes: int = Field(default=IOT_MAX_MESSAGE_BYTES, ge=256)
    max_clock_skew_s: float = Field(default=86_400.0, gt=0.0)
    #: the operators' SNS topic (None: notices are logged only)
    alarm_topic_arn: str | None = None
    metrics_namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        """The settings from the function's environment (``environ``: another mapping, e.g. the template's
        environment of the function with a local stack's names)."""
        e = environ
        return cls(
            history_table=env("HISTORY_TABLE", source=e),
            device_state_table=env("DEVICE_STATE_TABLE", source=e),
            bucket=env("DATA_BUCKET", source=e),
            dead_letter_prefix=env("DEAD_LETTER_PREFIX", DEFAULT_DEAD_LETTER_PREFIX, source=e),
            raw_ttl_days=env_float("RAW_TTL_DAYS", 1.0, source=e),
            max_message_bytes=env_int("MAX_MESSAGE_BYTES", IOT_MAX_MESSAGE_BYTES, source=e),
            max_clock_skew_s=env_float("MAX_CLOCK_SKEW_S", 86_400.0, source=e),
            alarm_topic_arn=env("ALARM_TOPIC_ARN", "", source=e) or None,
            metrics_namespace=env("METRICS_NAMESPACE", DEFAULT_NAMESPACE, source=e),
        )


@dataclass(frozen=True)
class Outcome:
    status: Status
    id: str | None = None
    thing: str | None = None
    kind: str | None = None
    reason: str | None = None
    key: str | None = None
    #: operator notices this message sent (1: it began an alarm episode; None: none)
    notices: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Ingestor:
    """The ingest logic with its clients (the Lambda handler keeps one per container)."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        dynamodb: Any = None,
        s3: Any = None,
        sns: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.ddb = dynamodb or client("dynamodb")
        self.s3 = s3 or client("s3")
        self._sns = sns
        self.clock = clock
        self.notices = NoticeBook(self.ddb, settings.device_state_table)
        self.device_state = DeviceStateWriter(self.ddb, settings.device_state_table)

    @property
    def notifier(self) -> Notifier:
        if self._sns is None and self.settings.alarm_topic_arn:
            self._sns = client("sns")
        return Notifier(self._sns, self.settings.alarm_topic_arn)

    # -- entry ------------------------------------------------------------------------------------
    def handle(self, event: dict[str, Any], now: float | None = None) -> Outcome:
        """One rule event → its outcome; a dead letter, a duplicate or a notice is also counted as a
        CloudWatch metric (embedded metric format: one log line, only for those outcomes)."""
        outcome = self._handle(event, now)
        notified = outcome.notices or 0
        counts = {"DeadLetters": int(outcome.status == "dead_letter"), "Duplicates": int(outcome.status == "duplicate")}
        if notified or any(counts.values()):
            props = {"reason": outcome.reason} if outcome.reason else {}
            emit_metrics(
                self.settings.metrics_namespace,
                {**counts, "AlarmNotifications": notified},
                int(self.clock() * 1000),
                **props,
            )
        return outcome

    def _handle(self, event: dict[str, Any], now: float | None) -> Outcome:
        received_at = time.time() if now is None else now
        if isinstance(event.get("eventType"), str) and isinstance(event.get("clientId"), str):
            return self._presence(event, received_at)
        try:
            meta = RuleEvent.model_validate(event)
        except ValidationError as exc:
            event_bytes = json.dumps(event, default=str).encode()
            return self._dead_letter("bad_event", summarise_errors(exc), event_bytes, received_at, None)
        if meta.rule_received_ms is not None:
            received_at = float(meta.rule_received_ms) / 1000.0
        raw = raw_payload(event, meta)
        if raw is None:
            return self._dead_letter(
                "bad_event", "payload_b64 is not valid base64", str(meta.payload_b64).encode(), received_at, meta
            )
        try:
            envelope, body = validate_message(
                raw,
                meta,
                received_at,
                max_message_bytes=self.settings.max_message_bytes,
                max_clock_skew_s=self.settings.max_clock_skew_s,
            )
        except Rejected as rej:
            return self._dead_letter(rej.reason, rej.detail, raw, received_at, meta, rej.msg_id)
        return self._store(envelope, body, received_at)

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
        # the lake is not written here: every kind reaches it through its rule's Firehose action
        st = self.settings
        change = self.device_state.update(envelope, body, received_at)
        notices = None
        if isinstance(body, Alarm) and change is not None and self._notify_alarm(envelope.thing, body, change):
            notices = 1
        item: dict[str, Any] = {
            "pk": history_pk(envelope.thing, envelope.kind),
            "sk": history_sk(envelope.ts, envelope.id),
            "thing": envelope.thing,
            "kind": envelope.kind,
            "ts": envelope.ts,
            "id": envelope.id,
            "simulated": envelope.simulated,
            "received_at": received_at,
        }
        if isinstance(body, Telemetry):
            item["body"] = json.dumps(live_window(body), separators=(",", ":"), allow_nan=False)
            item["n_samples"] = len(body.samples)
            if st.raw_ttl_days > 0:
                item["expires_at"] = int(envelope.ts + st.raw_ttl_days * 86_400.0)
        else:
            item["body"] = json.dumps(envelope.body, separators=(",", ":"), allow_nan=False)
        try:
            self.ddb.put_item(
                TableName=st.history_table, Item=marshal(item), ConditionExpression="attribute_not_exists(pk)"
            )
        except Exception as exc:
            if is_conditional_failure(exc):
                log.info("duplicate message ignored", extra={"message_id": envelope.id, "thing": envelope.thing})
                return Outcome("duplicate", id=envelope.id, thing=envelope.thing, kind=envelope.kind, notices=notices)
            raise
        log.debug("message stored", extra={"message_id": envelope.id, "thing": envelope.thing, "kind": envelope.kind})
        return Outcome("stored", id=envelope.id, thing=envelope.thing, kind=envelope.kind, notices=notices)

    def _notify_alarm(self, thing: str, alarm: Alarm, change: AlarmChange) -> bool:
        """Tell operators once per episode (:mod:`cloud.notify`): the delivery whose alarm update began the
        episode claims the notice; a retry of that message takes over a claim that was never marked sent."""
        if not alarm.active or not notifies(alarm.code):
            return False
        now = self.clock()
        if change == "new_episode":
            claimed = self.notices.claim_new(thing, alarm.code, alarm.ts, now)
        elif change == "stale":
            claimed = self.notices.reclaim(thing, alarm.code, alarm.ts, now)
        else:
            return False
        if not claimed:
            return False
        self.notifier.publish(
            thing,
            alarm.code,
            alarm.ts,
            alarm.message,
            {"severity": str(alarm.severity), "source_id": alarm.source_id, "details": alarm.details},
        )
        self.notices.mark_sent(thing, alarm.code, alarm.ts)
        return True

    def _presence(self, event: dict[str, Any], received_at: float) -> Outcome:
        """An IoT lifecycle event (``$aws/events/presence/{connected|disconnected}/{clientId}``; client id =
        thing name): the thing's connection state; an unknown thing or an older event changes nothing."""
        kind = event["eventType"]
        thing = event["clientId"]
        if kind not in ("connected", "disconnected"):
            return Outcome("presence", thing=thing, reason=f"ignored event type {kind[:40]!r}")
        at_ms = event.get("timestamp")
        at = float(at_ms) / 1000.0 if isinstance(at_ms, int | float) else received_at
        reason = event.get("disconnectReason")
        applied = self.device_state.update_presence(
            thing[:128], kind == "connected", at, str(reason)[:64] if reason is not None else None
        )
        return Outcome("presence", thing=thing, kind=kind, reason=None if applied else "unknown thing or older event")


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
