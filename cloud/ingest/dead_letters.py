"""Dead letters: a message that cannot be stored as data, written to the bucket's dead-letter prefix with the
reason (``<prefix>reason=<reason>/dt=<day>/<sha256 of the payload>.json``, :func:`cloud.lake.dead_letter_key`)
and the original payload, by whichever function found it wrong (the ingest Lambda; for telemetry, the lake
stream's transform)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from cloud.ingest.checks import RuleEvent
from cloud.lake import dead_letter_key

log = logging.getLogger("battwin.cloud.dead_letters")


def write_dead_letter(
    s3: Any,
    bucket: str,
    prefix: str,
    *,
    reason: str,
    detail: str,
    raw: bytes,
    received_at: float,
    meta: RuleEvent | None,
    msg_id: str | None = None,
) -> str:
    """Write one dead letter; its key (the same payload under the same reason is one object: idempotent)."""
    key = dead_letter_key(prefix, reason, raw, received_at)
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
    s3.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(record, separators=(",", ":")).encode(), ContentType="application/json"
    )
    log.warning(
        "message dead-lettered",
        extra={"reason": reason, "detail": detail[:300], "message_id": msg_id, "topic": record["topic"], "key": key},
    )
    return key
