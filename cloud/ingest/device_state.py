"""The DeviceState table's updates from one stored message, each conditional on being newer than what is
stored, so a repeated or late message changes nothing (step 3 of :mod:`cloud.ingest.handler`)."""

from __future__ import annotations

from typing import Any, Literal

from cloud.aws import error_code, is_conditional_failure, marshal_value
from schema.messages import Alarm, CycleRecord, Envelope, Health, Message, Telemetry

#: what an alarm update did: a new episode began (the alarm is active, it was not before), the stored alarm was
#: replaced (a repeat or a clear), or nothing changed (a duplicate or an older message)
AlarmChange = Literal["new_episode", "applied", "stale"]


class DeviceStateWriter:
    """Updates of one DeviceState table through a DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.ddb = dynamodb
        self.table = table

    def conditional_update(self, **kwargs: Any) -> bool:
        """An UpdateItem whose condition may fail (older data): True if applied."""
        return self._conditional(**kwargs) is not None

    def _conditional(self, **kwargs: Any) -> dict[str, Any] | None:
        """An UpdateItem whose condition may fail: its response if applied, None if not."""
        try:
            resp: dict[str, Any] = self.ddb.update_item(TableName=self.table, **kwargs)
        except Exception as exc:
            if is_conditional_failure(exc):
                return None
            raise
        return resp

    def update(self, envelope: Envelope, body: Message, received_at: float) -> AlarmChange | None:
        """Apply the message; for an alarm, what the alarm update did (None for other kinds)."""
        key = {"thing": {"S": envelope.thing}}
        ts = marshal_value(envelope.ts)
        sets = [
            "last_seen = :ts",
            "last_kind = :kind",
            "last_message_id = :id",
            "simulated = :sim",
            "updated_at = :now",
            "first_seen = if_not_exists(first_seen, :ts)",
            "last_heard = :now",  # the cloud's clock: what the silence check compares (cloud.silence)
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
            # as the device sent it: a reading it does not have is left out (the wire omits it too)
            values[":sample"] = marshal_value(body.samples[-1].model_dump(mode="json", exclude_none=True))
        self.conditional_update(
            Key=key,
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE silent_since",  # heard from: not silent
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
            return self.update_alarm(key, body)
        return None

    def update_alarm(self, key: dict[str, Any], alarm: Alarm) -> AlarmChange:
        """Store the alarm if it is newer than the stored one of its code; whether that began an episode."""
        kwargs: dict[str, Any] = {
            "ReturnValues": "UPDATED_OLD",
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
            resp = self._conditional(**kwargs)
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
            resp = self._conditional(**kwargs)
        if resp is None:
            return "stale"
        old = (resp.get("Attributes") or {}).get("alarms", {}).get("M", {}).get(alarm.code, {}).get("M", {})
        was_active = old.get("active", {}).get("BOOL", False) is True
        return "new_episode" if alarm.active and not was_active else "applied"

    def update_presence(self, thing: str, connected: bool, at: float, reason: str | None) -> bool:
        """An IoT lifecycle event of a known thing (newer than the last one applied): True if applied. A
        reconnect ends a silence episode."""
        values: dict[str, Any] = {":t": marshal_value(at), ":c": {"BOOL": connected}}
        if connected:
            expr = "SET connected = :c, connected_at = :t, presence_ts = :t REMOVE silent_since"
        else:
            expr = "SET connected = :c, disconnected_at = :t, presence_ts = :t, disconnect_reason = :r"
            values[":r"] = {"S": reason or "unknown"}
        return self.conditional_update(
            Key={"thing": {"S": thing}},
            UpdateExpression=expr,
            ConditionExpression="attribute_exists(thing) AND (attribute_not_exists(presence_ts) OR presence_ts < :t)",
            ExpressionAttributeValues=values,
        )
