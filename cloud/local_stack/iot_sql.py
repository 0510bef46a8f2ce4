"""The part of AWS IoT's rule SQL that battwin's rules use, evaluated locally.

Supported: ``SELECT item[, item …] FROM 'topic/filter'`` where an item is ``*`` or an expression with an
optional ``AS name``, and an expression is one of ``*``, ``encode(*, 'base64')``, ``topic()``, ``topic(n)``,
``timestamp()``, ``clientid()``. Anything else (a ``WHERE`` clause, another function) raises
:class:`RuleSqlError` when the rule is parsed, so a template the local runner cannot mirror fails at start
instead of delivering something the cloud would not.

Semantics follow the IoT SQL reference: ``*`` is the JSON payload's fields (a payload that is not a JSON
object cannot be selected with ``*``: the rule fails and its error action runs); ``encode(*, 'base64')``
is the raw payload bytes in base64; ``topic(n)`` is the n-th level (1-based) and Undefined past the last;
``timestamp()`` is the broker's receive time in milliseconds; an item whose value is Undefined is left
out of the result — which is what ``clientid()`` gives here, since an MQTT subscriber is not told the
publisher's client id. A Basic Ingest message (``$aws/rules/<rule name>/<topic>``) is evaluated on ``<topic>``:
:func:`basic_ingest_target` splits it, :class:`~cloud.local_stack.rules.LocalRulesRunner` routes it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_agent.config import BASIC_INGEST_ROOT

_SELECT_RE = re.compile(r"^\s*SELECT\s+(?P<items>.+?)\s+FROM\s+'(?P<topic>[^']+)'\s*(?P<rest>.*)$", re.I | re.S)
_ITEM_RE = re.compile(r"^(?P<expr>.+?)(?:\s+AS\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*))?$", re.I | re.S)
_CALL_RE = re.compile(r"^(?P<fn>[A-Za-z_][A-Za-z0-9_]*)\s*\((?P<args>.*)\)$", re.S)

UNDEFINED: Any = object()

#: Basic Ingest: a message published to ``$aws/rules/<rule name>/<topic>`` goes straight to that one rule (no
#: message broker, so no subscriber sees it and no other rule is triggered), and inside the rule ``topic()`` and
#: ``topic(n)`` see ``<topic>`` without the prefix (AWS IoT developer guide, "Reducing messaging costs with Basic
#: Ingest"; the rule's ``FROM`` is optional for rules invoked only this way): ``BASIC_INGEST_ROOT``, the prefix the
#: agent publishes under (:mod:`device_agent.config`)


class RuleSqlError(ValueError):
    """SQL that the local runner does not support (raised when the rule is parsed)."""


class RuleEvaluationError(ValueError):
    """The rule failed on a message (IoT Core would run the rule's error action)."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    received_ms: int
    client_id: str | None = None


Evaluator = Callable[[Message], Any]


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth, quote, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _json_object(msg: Message) -> dict[str, Any]:
    try:
        data = json.loads(msg.payload)
    except (UnicodeDecodeError, ValueError):
        raise RuleEvaluationError("SELECT * needs a JSON payload") from None
    if not isinstance(data, dict):
        raise RuleEvaluationError(f"SELECT * needs a JSON object, the payload is a JSON {type(data).__name__}")
    return data


def _topic_level(n: int) -> Evaluator:
    def level(msg: Message) -> Any:
        parts = msg.topic.split("/")
        return parts[n - 1] if 1 <= n <= len(parts) else UNDEFINED

    return level


def _compile_expr(expr: str) -> Evaluator:
    expr = expr.strip()
    if expr == "*":
        return _json_object
    call = _CALL_RE.match(expr)
    if call is None:
        raise RuleSqlError(f"unsupported expression {expr!r}")
    fn, args = call.group("fn").lower(), [a.strip() for a in _split_top_level(call.group("args"))]
    if fn == "topic" and not args:
        return lambda msg: msg.topic
    if fn == "topic" and len(args) == 1 and args[0].isdigit():
        return _topic_level(int(args[0]))
    if fn == "timestamp" and not args:
        return lambda msg: msg.received_ms
    if fn == "clientid" and not args:
        return lambda msg: msg.client_id if msg.client_id is not None else UNDEFINED
    if fn == "encode" and len(args) == 2 and args[0] == "*" and args[1].lower() == "'base64'":
        return lambda msg: base64.b64encode(msg.payload).decode("ascii")
    raise RuleSqlError(f"unsupported function call {expr!r}")


class RuleQuery:
    """A parsed rule statement: :attr:`topic_filter` to subscribe to, :meth:`evaluate` to build the event."""

    def __init__(self, sql: str) -> None:
        m = _SELECT_RE.match(sql)
        if m is None:
            raise RuleSqlError(f"unsupported rule statement (expected select-from-topic): {sql[:120]!r}")
        if m.group("rest").strip():
            raise RuleSqlError(f"unsupported clause after FROM: {m.group('rest').strip()[:80]!r}")
        self.sql = sql
        self.topic_filter = m.group("topic")
        self._items: list[tuple[str | None, Evaluator]] = []
        for item in _split_top_level(m.group("items")):
            im = _ITEM_RE.match(item)
            if im is None:  # pragma: no cover - the pattern matches any non-empty text
                raise RuleSqlError(f"cannot read select item {item!r}")
            expr, name = im.group("expr").strip(), im.group("name")
            if expr == "*" and name is None:
                self._items.append((None, _json_object))
            elif name is None:
                raise RuleSqlError(f"select item {item!r} needs AS <name> (the local runner names nothing itself)")
            else:
                self._items.append((name, _compile_expr(expr)))

    def matches(self, topic: str) -> bool:
        return topic_matches(self.topic_filter, topic)

    def evaluate(self, msg: Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in self._items:
            value = fn(msg)
            if name is None:
                out.update(value)
            elif value is not UNDEFINED:
                out[name] = value
        return out


def basic_ingest_target(topic: str) -> tuple[str, str] | None:
    """``(rule name, the topic the rule sees)`` for a Basic Ingest topic ``$aws/rules/<rule name>[/<topic>]``,
    None for any other topic (or one without a rule name)."""
    if not topic.startswith(BASIC_INGEST_ROOT):
        return None
    name, _sep, rest = topic[len(BASIC_INGEST_ROOT) :].partition("/")
    return (name, rest) if name else None


def basic_ingest_filter(rule_name: str) -> str:
    """The MQTT filter that receives every Basic Ingest message for ``rule_name``."""
    return f"{BASIC_INGEST_ROOT}{rule_name}/#"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` and ``#``."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)
