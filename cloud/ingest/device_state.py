"""The DeviceState table's updates from one stored message, each conditional on being newer than what is
stored, so a repeated or late message changes nothing (step 3 of :mod:`cloud.ingest.handler`)."""

from __future__ import annotations

from typing import Any

from cloud.aws import error_code, is_conditional_failure, marshal_value
from schema.messages import Alarm, CycleRecord, Envelope, Health, Message, Telemetry


class DeviceStateWriter:
    """Updates of one DeviceState table through a DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.ddb = dynamodb
        self.table = table

    def conditional_update(self, **kwargs: Any) -> bool:
        """An UpdateItem whose condition may fail (older data): True if applied."""
        try:
            self.ddb.update_item(TableName=self.table, **kwargs)
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def update(self, envelope: Envelope, body: Message, received_at: float) -> None:
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
        self.conditional_update(
            Key=key,
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="attribute_not_exists(last_seen) OR last_seen < :ts",
            ExpressionAttributeValues=values,
        )
        if isinstance(body, Health):
            self.conditional_update(
                Key=key,
                UpdateExpression="SET health = :h, health_ts = :ts",
                ConditionExpression="attribute_not_exists(health_ts) OR health_ts < :ts",
                ExpressionAttributeValues={":h": marshal_value(body.model_dump(mode="json")), ":ts": ts},
            )
        elif isinstance(body, CycleRecord):
            self.conditional_update(
                Key=key,
                UpdateExpression="SET last_cycle = :c, last_cycle_ts = :ts",
                ConditionExpression="attribute_not_exists(last_cycle_ts) OR last_cycle_ts < :ts",
                ExpressionAttributeValues={":c": marshal_value(body.model_dump(mode="json")), ":ts": ts},
            )
        elif isinstance(body, Alarm):
            self.update_alarm(key, body)

    def update_alarm(self, key: dict[str, Any], alarm: Alarm) -> None:
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
            self.conditional_update(**kwargs)
        except Exception as exc:
            if error_code(exc) != "ValidationException":
                raise
            # the item has no alarms map yet: create it (if still missing), then apply
            self.ddb.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET alarms = if_not_exists(alarms, :empty)",
                ExpressionAttributeValues={":empty": {"M": {}}},
            )
            self.conditional_update(**kwargs)
