"""The ingest Lambda's checks of one message: the rule's event → the device's payload → size, JSON, envelope,
topic, clock, body (see :mod:`cloud.ingest.handler`). A failed check raises :class:`Rejected` with the reason
the message is dead-lettered under. No AWS clients here."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from schema.messages import BODY_TYPES, Envelope, Message, PackedBodyError, unpacked_body


class RuleEvent(BaseModel):
    """What the IoT rule adds to (or sends instead of) the envelope."""

    model_config = ConfigDict(extra="allow")

    payload_b64: str | None = None
    rule_topic: str | None = None
    rule_thing: str | None = None
    rule_kind: str | None = None
    rule_received_ms: int | float | None = None
    rule_client_id: str | None = None


class Rejected(Exception):
    """A message that cannot be stored as data (→ dead letter)."""

    def __init__(self, reason: str, detail: str, msg_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.msg_id = msg_id


def summarise_errors(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def raw_payload(event: dict[str, Any], meta: RuleEvent) -> bytes | None:
    """The device's payload: decoded from ``payload_b64``, or the event without the rule's fields (None: bad
    base64)."""
    if meta.payload_b64 is not None:
        try:
            return base64.b64decode(meta.payload_b64, validate=True)
        except (binascii.Error, ValueError):
            return None
    inline = {k: v for k, v in event.items() if not k.startswith("rule_")}
    return json.dumps(inline, separators=(",", ":"), default=str).encode()


def validate_message(
    raw: bytes, meta: RuleEvent, received_at: float, *, max_message_bytes: int, max_clock_skew_s: float
) -> tuple[Envelope, Message]:
    """The envelope and body of ``raw`` if every check passes (module docstring), else :class:`Rejected`."""
    limit = max_message_bytes
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
        raise Rejected("invalid_envelope", summarise_errors(exc), msg_id) from None
    if meta.rule_thing is None or meta.rule_kind is None:
        raise Rejected("missing_topic", "the rule passed no topic thing/kind to check the envelope against", msg_id)
    if envelope.thing != meta.rule_thing:
        raise Rejected(
            "thing_mismatch", f"envelope thing {envelope.thing!r} != topic thing {meta.rule_thing!r}", msg_id
        )
    if envelope.kind != meta.rule_kind:
        raise Rejected("kind_mismatch", f"envelope kind {envelope.kind!r} != topic kind {meta.rule_kind!r}", msg_id)
    if envelope.ts > received_at + max_clock_skew_s:
        raise Rejected(
            "clock_skew",
            f"envelope time {envelope.ts} is more than {max_clock_skew_s} s ahead",
            msg_id,
        )
    try:
        fields = unpacked_body(envelope.body) if envelope.kind == "telemetry" else envelope.body
    except PackedBodyError as exc:
        raise Rejected("invalid_body", str(exc), msg_id) from None
    try:
        body = BODY_TYPES[envelope.kind].model_validate(fields)
    except ValidationError as exc:
        raise Rejected("invalid_body", summarise_errors(exc), msg_id) from None
    return envelope, body
