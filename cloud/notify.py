"""Operators are told: a battery alarm or a silent device reaches the stack's SNS topic once per episode.

An *episode* of a code on a thing starts when the condition becomes active while it was not (an alarm raised
after a clear or for the first time; a device heard from for the last time at ``last_heard``) and ends when
it clears (an ``active = false`` alarm; the device's next message or reconnect). The episode's start time
identifies it.

Who notifies is decided in DeviceState, per thing and code, by a conditional update of the attribute
``notice_<code>`` = ``{episode, sent, claimed_at}``:

* :meth:`NoticeBook.claim_new` — the caller saw the episode start (its own conditional update of the alarm
  applied and the alarm was not active before): it claims the notice if no later-or-equal episode is recorded.
  Two deliveries of the same message cannot both get here (only one alarm update applies); two different
  messages of one episode cannot both get here either (the second sees the alarm already active).
* :meth:`NoticeBook.reclaim` — a retry after a failure between the claim and the publish: it takes over a
  claim of *this* episode that was never marked sent and is older than the lease (Lambda retries an
  asynchronous invocation after a minute or more), so a crash does not lose the notice and a concurrent
  duplicate does not send a second one.
* :meth:`NoticeBook.mark_sent` after the publish.

No AWS client is created here: the callers pass theirs.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from cloud.aws import is_conditional_failure, marshal_value
from schema.messages import ANOMALY_CODES

log = logging.getLogger("battwin.cloud.notify")

#: the battery alarms an operator is told about (``device_agent.alarms``), and the anomaly detector's codes
#: (issue 15: capacity drop, resistance jump, heating out of proportion to the current, cell drift); the agent's
#: own housekeeping codes (spool_dropped, model_unavailable, ...) stay in DeviceState and the dashboard
BATTERY_ALARM_CODES = frozenset(
    {"over_temperature", "eol_reached", "cell_imbalance", "source_offline", "soc_disagreement"}
)
NOTIFY_CODES = BATTERY_ALARM_CODES | ANOMALY_CODES
SILENT_CODE = "device_silent"
#: a claim older than this (seconds) that was never marked sent may be taken over by a retry
CLAIM_LEASE_S = 45.0
#: the custom metrics' namespace when the environment names none (the template sets METRICS_NAMESPACE)
DEFAULT_NAMESPACE = "battwin"


def notifies(code: str) -> bool:
    """Whether an alarm of ``code`` is sent to operators (the battery alarms and the anomaly codes)."""
    return code in NOTIFY_CODES


def notice_attribute(code: str) -> str:
    return f"notice_{code}"


class NoticeBook:
    """The ``notice_<code>`` attributes of one DeviceState table (``dynamodb``: a boto3 client)."""

    def __init__(self, dynamodb: Any, table: str, lease_s: float = CLAIM_LEASE_S) -> None:
        self.ddb = dynamodb
        self.table = table
        self.lease_s = lease_s

    def _update(self, **kwargs: Any) -> bool:
        try:
            self.ddb.update_item(TableName=self.table, **kwargs)
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def claim_new(
        self,
        thing: str,
        code: str,
        episode: float,
        now: float,
        *,
        extra_condition: str = "",
        extra_values: dict[str, Any] | None = None,
        extra_set: str = "",
    ) -> bool:
        """Claim the notice of a new episode (True: the caller publishes, then :meth:`mark_sent`)."""
        cond = "attribute_exists(thing) AND (attribute_not_exists(#n) OR #n.episode < :ep)"
        if extra_condition:
            cond += f" AND ({extra_condition})"
        return self._update(
            Key={"thing": {"S": thing}},
            UpdateExpression="SET #n = :notice" + (f", {extra_set}" if extra_set else ""),
            ConditionExpression=cond,
            ExpressionAttributeNames={"#n": notice_attribute(code)},
            ExpressionAttributeValues={
                ":notice": marshal_value({"episode": episode, "sent": False, "claimed_at": now}),
                ":ep": marshal_value(episode),
                **(extra_values or {}),
            },
        )

    def reclaim(self, thing: str, code: str, episode: float, now: float) -> bool:
        """Take over an unsent claim of this episode whose lease ran out (a retry after a failed publish)."""
        return self._update(
            Key={"thing": {"S": thing}},
            UpdateExpression="SET #n.claimed_at = :now",
            ConditionExpression="#n.episode = :ep AND #n.sent = :false AND #n.claimed_at < :stale",
            ExpressionAttributeNames={"#n": notice_attribute(code)},
            ExpressionAttributeValues={
                ":now": marshal_value(now),
                ":ep": marshal_value(episode),
                ":false": {"BOOL": False},
                ":stale": marshal_value(now - self.lease_s),
            },
        )

    def mark_sent(self, thing: str, code: str, episode: float) -> None:
        self._update(
            Key={"thing": {"S": thing}},
            UpdateExpression="SET #n.sent = :true",
            ConditionExpression="#n.episode = :ep",
            ExpressionAttributeNames={"#n": notice_attribute(code)},
            ExpressionAttributeValues={":true": {"BOOL": True}, ":ep": marshal_value(episode)},
        )


class Notifier:
    """Publishes an operator notice to the SNS topic (``topic_arn`` empty: notices are only logged)."""

    def __init__(self, sns: Any, topic_arn: str | None) -> None:
        self.sns = sns
        self.topic_arn = topic_arn or None

    def publish(self, thing: str, code: str, episode: float, summary: str, details: dict[str, Any]) -> None:
        message = {"thing": thing, "code": code, "episode_start": episode, "summary": summary, **details}
        log.warning("operator notice", extra={"thing": thing, "code": code, "episode_start": episode})
        if self.topic_arn is None:
            return
        self.sns.publish(
            TopicArn=self.topic_arn,
            Subject=f"battwin {code} on {thing}"[:100],
            Message=json.dumps(message, separators=(",", ":"), default=str),
            MessageAttributes={
                "thing": {"DataType": "String", "StringValue": thing},
                "code": {"DataType": "String", "StringValue": code},
            },
        )


# -- CloudWatch embedded metrics ---------------------------------------------------------------------

_EMF = logging.getLogger("battwin.emf")


def _emf_logger() -> logging.Logger:
    if not _EMF.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _EMF.addHandler(handler)
        _EMF.setLevel(logging.INFO)
        _EMF.propagate = False  # the line must stay a bare EMF object, not wrapped by the JSON log format
    return _EMF


def emit_metrics(namespace: str, counts: dict[str, int], now_ms: int, **properties: str) -> dict[str, Any]:
    """One CloudWatch embedded-metric-format line (CloudWatch Logs turns it into metrics; no API call):
    ``counts`` as Count metrics without dimensions, ``properties`` as searchable log fields. Returns the
    record."""
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [[]],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in sorted(counts)],
                }
            ],
        },
        **properties,
        **counts,
    }
    _emf_logger().info(json.dumps(record, separators=(",", ":")))
    return record
