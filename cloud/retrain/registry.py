"""The ModelRegistry table: training jobs, every decision, the champion, the component version counter.

Items (``pk`` / ``sk``):

* ``job`` / <training job name> — what was trained on (data fingerprint, cells, rows), its status and, once
  judged, the decision (``promoted`` | ``rejected`` | ``failed`` | ``error``), the metrics compared and the
  component version and deployment when promoted;
* ``decision`` / <ISO time>#<job> — an append-only log: one item per decision (also ``started`` and
  ``skipped`` from the scheduled Lambda), with the reason;
* ``champion`` / ``current`` — the model in the field: job, score, metric, component version, artifact URIs;
* ``counter`` / ``component_version`` — an atomic counter for the component's patch version.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from cloud.aws import client, is_conditional_failure, marshal, marshal_value, unmarshal
from cloud.tables import (
    CHAMPION_SK,
    COUNTER_SK,
    REG_CHAMPION,
    REG_COUNTER,
    REG_DECISION,
    REG_JOB,
)

log = logging.getLogger("battwin.cloud.registry")

DECIDING = "deciding"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Registry:
    def __init__(self, table: str, dynamodb: Any = None) -> None:
        self.table = table
        self.ddb = dynamodb or client("dynamodb")

    # -- jobs -------------------------------------------------------------------------------------
    def put_job(self, job_name: str, fields: dict[str, Any]) -> None:
        self.ddb.put_item(TableName=self.table, Item=marshal({"pk": REG_JOB, "sk": job_name, **fields}))

    def get_job(self, job_name: str) -> dict[str, Any] | None:
        got = self.ddb.get_item(TableName=self.table, Key=self._key(REG_JOB, job_name), ConsistentRead=True)
        return unmarshal(got["Item"]) if "Item" in got else None

    def claim(self, job_name: str, now: float) -> bool:
        """Mark the job as being judged; False if it already was (a re-delivered completion event)."""
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key=self._key(REG_JOB, job_name),
                UpdateExpression="SET decision = :d, decision_started_at = :now",
                ConditionExpression="attribute_not_exists(decision)",
                ExpressionAttributeValues={":d": {"S": DECIDING}, ":now": marshal_value(now)},
            )
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def release(self, job_name: str) -> None:
        """Undo :meth:`claim` after an error, so that a retry judges the job again."""
        self.ddb.update_item(
            TableName=self.table,
            Key=self._key(REG_JOB, job_name),
            UpdateExpression="REMOVE decision, decision_started_at",
            ConditionExpression="decision = :d",
            ExpressionAttributeValues={":d": {"S": DECIDING}},
        )

    # -- decisions --------------------------------------------------------------------------------
    def record(
        self,
        job_name: str,
        decision: str,
        reason: str,
        now: float | None = None,
        *,
        update_job: bool = True,
        **fields: Any,
    ) -> None:
        """Append to the decision log and (for a judged job, unless ``update_job`` is False) set the job's
        decision fields."""
        now = time.time() if now is None else now
        entry = {
            "pk": REG_DECISION,
            "sk": f"{iso(now)}#{job_name}",
            "job_name": job_name,
            "decision": decision,
            "reason": reason,
            "decided_at": now,
            **fields,
        }
        self.ddb.put_item(TableName=self.table, Item=marshal(entry))
        if not update_job or decision in ("started", "skipped"):
            return
        names = {"#f" + str(i): k for i, k in enumerate(("decision", "reason", "decided_at", *fields))}
        values = {":v" + str(i): marshal_value(v) for i, v in enumerate((decision, reason, now, *fields.values()))}
        sets = ", ".join(f"#f{i} = :v{i}" for i in range(len(names)))
        self.ddb.update_item(
            TableName=self.table,
            Key=self._key(REG_JOB, job_name),
            UpdateExpression=f"SET {sets}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        got = self.ddb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": REG_DECISION}},
            ScanIndexForward=True,
            Limit=limit,
        )
        return [unmarshal(it) for it in got.get("Items", [])]

    # -- champion ---------------------------------------------------------------------------------
    def champion(self) -> dict[str, Any] | None:
        got = self.ddb.get_item(TableName=self.table, Key=self._key(REG_CHAMPION, CHAMPION_SK), ConsistentRead=True)
        return unmarshal(got["Item"]) if "Item" in got else None

    def set_champion(self, fields: dict[str, Any], previous_job: str | None) -> bool:
        """Replace the champion if it is still ``previous_job`` (None: if there is none)."""
        item = marshal({"pk": REG_CHAMPION, "sk": CHAMPION_SK, **fields})
        try:
            if previous_job is None:
                self.ddb.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            else:
                self.ddb.put_item(
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="job_name = :prev",
                    ExpressionAttributeValues={":prev": {"S": previous_job}},
                )
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def next_version_number(self) -> int:
        got = self.ddb.update_item(
            TableName=self.table,
            Key=self._key(REG_COUNTER, COUNTER_SK),
            UpdateExpression="ADD seq :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        return int(got["Attributes"]["seq"]["N"])

    @staticmethod
    def _key(pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}
