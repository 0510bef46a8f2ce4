"""The lake stream's transform Lambda: packed telemetry batches into the rows the lake keeps.

Devices send a telemetry batch packed (``{"zsamples": <base64 zlib of the samples array>, "n": …}``, see
:func:`schema.messages.pack_samples`): one 5 KB unit of IoT Core's bill instead of three. The lake keeps the
plain form (``body.samples``, what the Glue tables, the Athena data sets and retraining read), so the
``LakeFirehose`` stream runs this function before its partition query (Firehose processes a record as
deaggregation → Lambda transformation → partition keys). Per record:

* a telemetry record whose body is packed: the same record with ``body`` = ``{"samples": [...]}``;
* anything else, and a packed body that does not unpack (the ingest Lambda dead-letters that message with the
  reason): unchanged, so nothing accepted by the rule is lost here and the partition query decides as before.

The result keeps the record's trailing separator. A batch of records is answered in Firehose's transformation
format (``recordId``, ``result`` ``Ok``, ``data`` base64), never ``ProcessingFailed``: a record this function
cannot read is passed on as it came.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from cloud.aws import LambdaContext, setup_lambda_logging
from schema.messages import PackedBodyError, is_packed, unpacked_body

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
        log.warning(
            "packed telemetry body does not unpack; kept as sent",
            extra={"reason": str(exc), "thing": str(record.get("thing"))[:128], "id": str(record.get("id"))[:64]},
        )
        return data
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + separator


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Firehose's data-transformation call: ``{"records": [{"recordId", "data"}]}`` → the transformed records."""
    setup_lambda_logging()
    out: list[dict[str, Any]] = []
    expanded = 0
    for rec in event.get("records") or []:
        raw = rec.get("data", "")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError, TypeError):
            out.append({"recordId": rec.get("recordId"), "result": "Ok", "data": raw})
            continue
        new = expand_record(data)
        expanded += new is not data
        out.append({"recordId": rec.get("recordId"), "result": "Ok", "data": base64.b64encode(new).decode()})
    log.info("lake records transformed", extra={"records": len(out), "expanded": expanded})
    return {"records": out}
