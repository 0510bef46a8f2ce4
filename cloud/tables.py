"""Key design of the DynamoDB tables (one place, used by the Lambdas, the template's key schema and tests).

``DeviceState`` — partition key ``thing``. One item per thing: ``first_seen``, ``last_seen`` (envelope time
of the newest message), ``last_kind``, ``last_message_id``, ``latest_sample`` (newest telemetry sample),
``health`` + ``health_ts`` (newest Health body), ``last_cycle`` + ``last_cycle_ts``, ``alarms`` (map code →
newest Alarm of that code; open alarms are those with ``active``). Every update is conditional on time, so
late or re-delivered messages never overwrite newer state.

``History`` — partition key ``pk`` = ``<thing>#<kind>``, sort key ``sk`` = ``<ms since epoch, 15 digits>#<id>``;
attributes ``thing``, ``kind``, ``ts``, ``id``, ``body`` (the message body as JSON text), ``received_at``,
``simulated``, ``n_samples`` (telemetry) and ``expires_at`` (TTL, raw telemetry only). The global secondary
index ``by_thing_time`` (``thing``, ``sk``; keys only, so that it costs one small write per message) serves
history of every kind: the API reads the keys from it and the items from the table. The put of the History
item is the idempotency check: conditional on the key, made of the message's thing, kind, time and id, not
existing.

``ModelRegistry`` — ``pk`` + ``sk``: ``job``/<training job>, ``decision``/<iso time>#<job>,
``champion``/``current``, ``counter``/``component_version``.
"""

from __future__ import annotations

HISTORY_BY_TIME_INDEX = "by_thing_time"
_SK_DIGITS = 15
_SK_TOP = "~"  # sorts after every character a message id may hold ([A-Za-z0-9_.:-])


def history_pk(thing: str, kind: str) -> str:
    return f"{thing}#{kind}"


def ts_ms(ts: float) -> int:
    return round(ts * 1000.0)


def history_sk(ts: float, msg_id: str) -> str:
    return f"{ts_ms(ts):0{_SK_DIGITS}d}#{msg_id}"


def sk_lower(ts: float) -> str:
    return f"{max(ts_ms(ts), 0):0{_SK_DIGITS}d}#"


def sk_upper(ts: float) -> str:
    return f"{max(ts_ms(ts), 0):0{_SK_DIGITS}d}#{_SK_TOP}"


# ModelRegistry partition keys
REG_JOB = "job"
REG_DECISION = "decision"
REG_CHAMPION = "champion"
REG_COUNTER = "counter"
CHAMPION_SK = "current"
COUNTER_SK = "component_version"
