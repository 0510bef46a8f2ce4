"""Ingest Lambda: one device message (cycles, health, alarms) from its IoT rule → DeviceState and a small History
item (DynamoDB only: the S3 data lake is fed by the same rule's Firehose action, never by this function).

The template's rule of each kind (one per kind, whose other action puts the same record to the lake's Firehose
stream; one rule because a Basic Ingest message reaches only the rule it names) hands over the envelope as sent
with the topic's parts added (``SELECT *, topic(2) AS rule_thing, topic(3) AS rule_kind, timestamp() AS
rule_received_ms, clientid() AS rule_client_id``), so a payload that is not a JSON object fails in the rule, whose
S3 error action writes it under ``dead-letter/rule-errors/``; an event carrying the payload base64-encoded instead
(``encode(*, 'base64') AS payload_b64``) is accepted too. An IoT lifecycle event (``clientId`` and
``eventType``, from the presence rule) updates the thing's connection state in DeviceState
(:meth:`Ingestor._presence`). **Telemetry does not come here**: its rule
feeds only the lake, whose stream's transform writes telemetry's one DynamoDB item (:mod:`cloud.live_window`);
a telemetry event handed to this function anyway is stored the same way (that item, DeviceState untouched).

Per message (the checks: :mod:`cloud.ingest.checks`): size limit → JSON →
:class:`~schema.messages.Envelope` → the topic's thing and kind must match the envelope's → body model
→ store. Anything that fails a check is written to the dead-letter prefix
with the reason and the original payload (:mod:`cloud.ingest.dead_letters`; the invocation succeeds: retrying
would not help). Storing, in this order, every step idempotent:

1. DeviceState updates (:mod:`cloud.ingest.device_state`), each conditional on being newer than what is stored
   (a repeat changes nothing); an alarm that began an episode is published to the operators' SNS topic once
   (:mod:`cloud.notify`);
2. the History item, conditional on its key (thing, kind, time, id) not existing: this put decides — a
   message whose item exists is a duplicate, and its earlier delivery stored everything.

An AWS error in 1–2 raises, so Lambda's asynchronous retries (and then the on-failure destination, an SQS
queue) apply; a retry redoes the steps that are not done yet and the History put last, so a valid message
is never dropped and never stored twice. (The History put comes last rather than first as a "claim" so
that a message costs one DynamoDB write of its size, not two: writes are billed by item size.)
"""

from __future__ import annotations

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
from cloud.ingest.dead_letters import write_dead_letter
from cloud.ingest.device_state import AlarmChange, DeviceStateWriter
from cloud.lake import DEFAULT_DEAD_LETTER_PREFIX
from cloud.live_window import live_item
from cloud.notify import DEFAULT_NAMESPACE, NoticeBook, Notifier, emit_metrics, notifies
from cloud.tables import history_pk, history_sk
from schema.messages import Alarm, Envelope, Message, Telemetry

log = logging.getLogger("battwin.cloud.ingest")

#: AWS IoT Core's own limit for an MQTT message
IOT_MAX_MESSAGE_BYTES = 128 * 1024
Status = Literal["stored", "duplicate", "dead_letter", "presence"]


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
        key = write_dead_letter(
            self.s3,
            self.settings.bucket,
            self.settings.dead_letter_prefix,
            reason=reason,
            detail=detail,
            raw=raw,
            received_at=received_at,
            meta=meta,
            msg_id=msg_id,
        )
        thing = meta.rule_thing if meta else None
        return Outcome("dead_letter", id=msg_id, thing=thing, reason=reason, key=key)

    # -- storing ----------------------------------------------------------------------------------
    def _store(self, envelope: Envelope, body: Message, received_at: float) -> Outcome:
        # the lake is not written here: every kind reaches it through its rule's Firehose action
        st = self.settings
        notices = None
        if isinstance(body, Telemetry):
            # telemetry's only DynamoDB write is its live-window item (cloud.live_window; DeviceState is not
            # touched: readers take the latest sample and last-heard time from that item). The template's telemetry
            # rule does not invoke this function: the lake stream's transform writes the item
            item = live_item(envelope, body, received_at, st.raw_ttl_days)
        else:
            change = self.device_state.update(envelope, body, received_at)
            if isinstance(body, Alarm) and change is not None and self._notify_alarm(envelope.thing, body, change):
                notices = 1
            item = {
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
