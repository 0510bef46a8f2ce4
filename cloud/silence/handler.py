"""Silence check Lambda (an EventBridge schedule): a device not heard from for ``SILENCE_AFTER_S`` is raised as
``device_silent`` to the operators' SNS topic, once per episode.

"Heard from" is the latest of ``last_heard`` (the ingest's clock when it stored the device's last cycles, health or
alarm message), ``connected_at`` (the last IoT lifecycle *connected* event) and, for a device those call silent,
the receive time of its newest telemetry batch (its live-window item in History, :mod:`cloud.live_window`:
telemetry does not update DeviceState; one query per such device and run); a *disconnected* event is recorded
by the ingest and reported in the notice. The episode is the time the device was last heard from, so the next
scheduled run does not repeat it; the device's next message or reconnect removes ``silent_since`` (the ingest;
for telemetry alone, the next run that finds it fresh), and a later silence is a new episode. Who notifies:
:class:`cloud.notify.NoticeBook` (a conditional update that also checks the device was not heard from since the
scan).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.aws import (
    LambdaContext,
    client,
    env,
    env_float,
    is_conditional_failure,
    marshal_value,
    setup_lambda_logging,
    unmarshal,
)
from cloud.live_window import newest_live_item
from cloud.notify import DEFAULT_NAMESPACE, SILENT_CODE, NoticeBook, Notifier, emit_metrics

log = logging.getLogger("battwin.cloud.silence")


class SilenceSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    device_state_table: str
    #: where telemetry's live-window items are (None: DeviceState alone decides)
    history_table: str | None = None
    silence_after_s: float = Field(default=900.0, gt=0.0)
    alarm_topic_arn: str | None = None
    metrics_namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def from_env(cls) -> SilenceSettings:
        return cls(
            device_state_table=env("DEVICE_STATE_TABLE"),
            history_table=env("HISTORY_TABLE", "") or None,
            silence_after_s=env_float("SILENCE_AFTER_S", 900.0),
            alarm_topic_arn=env("ALARM_TOPIC_ARN", "") or None,
            metrics_namespace=env("METRICS_NAMESPACE", DEFAULT_NAMESPACE),
        )


@dataclass
class CheckResult:
    scanned: int = 0
    silent: list[str] = field(default_factory=list)  # silent now (new or continuing episodes)
    notified: list[str] = field(default_factory=list)  # a notice sent by this run


def last_heard(item: dict[str, Any]) -> float | None:
    times = [float(item[k]) for k in ("last_heard", "connected_at") if isinstance(item.get(k), int | float)]
    return max(times) if times else None


class SilenceCheck:
    def __init__(self, settings: SilenceSettings, dynamodb: Any = None, sns: Any = None) -> None:
        self.settings = settings
        self.ddb = dynamodb or client("dynamodb")
        if sns is None and settings.alarm_topic_arn:
            sns = client("sns")
        self.notifier = Notifier(sns, settings.alarm_topic_arn)
        self.notices = NoticeBook(self.ddb, settings.device_state_table)

    def run(self, now: float | None = None) -> CheckResult:
        now = time.time() if now is None else now
        result = CheckResult()
        kwargs: dict[str, Any] = {
            "TableName": self.settings.device_state_table,
            "ProjectionExpression": "thing, last_heard, connected_at, connected, disconnected_at, disconnect_reason, "
            "silent_since",
        }
        while True:
            page = self.ddb.scan(**kwargs)
            for raw in page.get("Items", []):
                result.scanned += 1
                self._check(unmarshal(raw), now, result)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        emit_metrics(
            self.settings.metrics_namespace,
            {"SilentDevices": len(result.silent), "SilenceNotifications": len(result.notified)},
            int(now * 1000),
        )
        return result

    def _check(self, item: dict[str, Any], now: float, result: CheckResult) -> None:
        thing = str(item["thing"])
        heard = last_heard(item)
        if heard is None or now - heard <= self.settings.silence_after_s:
            return
        telemetry = self._telemetry_heard(thing)
        if telemetry is not None and telemetry > heard:
            heard = telemetry
            if now - heard <= self.settings.silence_after_s:
                if isinstance(item.get("silent_since"), int | float) and heard > float(item["silent_since"]):
                    self._resumed(thing)
                return
        result.silent.append(thing)
        # claims the notice only if the device was not heard from since the scan (the ingest moves last_heard)
        claimed = self.notices.claim_new(
            thing,
            SILENT_CODE,
            heard,
            now,
            extra_condition="(attribute_not_exists(last_heard) OR last_heard <= :heard) AND "
            "(attribute_not_exists(connected_at) OR connected_at <= :heard)",
            extra_values={":heard": marshal_value(heard)},
            extra_set="silent_since = :heard",
        )
        if not claimed:
            claimed = self.notices.reclaim(thing, SILENT_CODE, heard, now)
        if not claimed:
            return
        details = {
            "silent_for_s": round(now - heard, 1),
            "connected": item.get("connected"),
            "disconnected_at": item.get("disconnected_at"),
            "disconnect_reason": item.get("disconnect_reason"),
        }
        self.notifier.publish(thing, SILENT_CODE, heard, f"{thing} not heard from for {now - heard:.0f} s", details)
        self.notices.mark_sent(thing, SILENT_CODE, heard)
        result.notified.append(thing)

    def _telemetry_heard(self, thing: str) -> float | None:
        """When the thing's newest telemetry batch was received (None: none kept, or no History table set)."""
        if not self.settings.history_table:
            return None
        item = newest_live_item(self.ddb, self.settings.history_table, thing)
        received = (item or {}).get("received_at")
        return float(received) if isinstance(received, int | float) else None

    def _resumed(self, thing: str) -> None:
        """A silent device heard from again by telemetry alone: its episode ends (the ingest does this for the
        other kinds)."""
        try:
            self.ddb.update_item(
                TableName=self.settings.device_state_table,
                Key={"thing": {"S": thing}},
                UpdateExpression="REMOVE silent_since",
                ConditionExpression="attribute_exists(silent_since)",
            )
        except Exception as exc:
            if not is_conditional_failure(exc):
                raise


_CACHE: dict[str, SilenceCheck] = {}


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Lambda entry point (``cloud.silence.handler.handler``), invoked by the schedule."""
    setup_lambda_logging()
    settings = SilenceSettings.from_env()
    check = _CACHE.get("check")
    if check is None or check.settings != settings:
        check = _CACHE["check"] = SilenceCheck(settings)
    result = check.run()
    log.info(
        "silence check",
        extra={"scanned": result.scanned, "silent": len(result.silent), "notified": result.notified[:50]},
    )
    return {"scanned": result.scanned, "silent": len(result.silent), "notified": len(result.notified)}
