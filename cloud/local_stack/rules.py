"""A local stand-in for AWS IoT Core's rules engine: the template's topic rules, run against any MQTT broker.

For each ``AWS::IoT::TopicRule`` of ``cloud/template.yaml`` the runner subscribes to the rule's ``FROM``
filter, evaluates its ``SELECT`` on every message (:mod:`cloud.local_stack.iot_sql`) and invokes the
function of the rule's Lambda action with the result — the same event the rule hands the ingest Lambda in
AWS. As there, the invocation is asynchronous (a queue and worker threads), a failing invocation is retried
``MaximumRetryAttempts`` times (from the function's ``EventInvokeConfig``; here after 0.5 s and 1 s rather
than Lambda's minutes) and then recorded as a failed event; a message the SQL cannot be evaluated on is
written by the rule's S3 error action.

Basic Ingest as in IoT Core: the runner also subscribes to ``$aws/rules/<RuleName>/#`` for every rule and hands
such a message to that one rule only, evaluated on the topic without the ``$aws/rules/<RuleName>/`` prefix (what
``topic()`` sees in AWS); a message naming no enabled rule triggers nothing (counted as ``rule_not_found``, IoT
Core's ``RuleNotFound`` metric). A message on a plain topic goes to every rule whose ``FROM`` filter matches.
:meth:`LocalRulesRunner.stats` counts each rule's triggers (``triggered:<logical id>``) and their sum
(``rules_triggered``), so one can see how many rules a message set off.

A rule's Firehose action hands the target named by the stream's logical id the record as IoT Core sends it
(the SQL's result as JSON plus the action's ``Separator``); :meth:`LocalAws.firehose_targets
<cloud.local_stack.aws_local.LocalAws.firehose_targets>` puts it to moto's Firehose. A put that fails runs the
rule's error action, as in IoT Core (Firehose actions are not retried by Lambda's machinery).
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud.local_stack.iot_sql import (
    Message,
    RuleEvaluationError,
    RuleQuery,
    basic_ingest_filter,
    basic_ingest_target,
)
from cloud.local_stack.template import RuleSpec, load_template, max_retry_attempts, topic_rules
from device_agent.config import MqttSettings
from device_agent.uplink.mqtt_transport import MqttTransport

log = logging.getLogger("battwin.local_stack.rules")

#: an invoked function: the rule's event → the function's result
Target = Callable[[dict[str, Any]], Any]
#: a Firehose action's target: the record's bytes → anything
RecordTarget = Callable[[bytes], Any]
#: where an S3 error action writes: (key, body)
ErrorSink = Callable[[str, bytes], None]
#: where an invocation that failed every retry goes (Lambda's on-failure destination): the destination record
FailureSink = Callable[[dict[str, Any]], None]

RETRY_DELAYS_S = (0.5, 1.0, 2.0)


@dataclass
class _Rule:
    spec: RuleSpec
    query: RuleQuery
    target: Target | None
    retries: int
    firehose: RecordTarget | None = None


def firehose_record(spec: RuleSpec, event: dict[str, Any]) -> bytes:
    """The record a rule's Firehose action puts: the SQL's result as JSON plus the action's ``Separator``."""
    return (json.dumps(event, separators=(",", ":"), allow_nan=False) + spec.separator).encode()


class LocalRulesRunner:
    """Subscribes to every enabled rule's topic filter and invokes the rule's function for each message."""

    def __init__(
        self,
        broker_url: str,
        targets: dict[str, Any],
        *,
        error_sink: ErrorSink | None = None,
        failure_sink: FailureSink | None = None,
        workers: int = 3,
        client_id: str = "battwin-local-rules",
        template: dict[str, Any] | None = None,
    ) -> None:
        tpl = template if template is not None else load_template()
        self.rules: list[_Rule] = []
        for spec in topic_rules(tpl):
            if spec.disabled:
                continue
            if spec.function is None and spec.firehose is None:
                raise ValueError(f"rule {spec.logical_id} has neither a Lambda nor a Firehose action")
            for name in (spec.function, spec.firehose):
                if name is not None and name not in targets:
                    raise ValueError(f"rule {spec.logical_id} acts on {name!r}, which has no local target")
            self.rules.append(
                _Rule(
                    spec,
                    RuleQuery(spec.sql),
                    targets[spec.function] if spec.function else None,
                    max_retry_attempts(tpl, spec.function) if spec.function else 0,
                    targets[spec.firehose] if spec.firehose else None,
                )
            )
        #: the enabled rules by ``RuleName``: where a Basic Ingest message goes
        self.by_name: dict[str, _Rule] = {r.spec.rule_name: r for r in self.rules if r.spec.rule_name}
        self.error_sink = error_sink
        self.failure_sink = failure_sink
        self.transport = MqttTransport(MqttSettings(url=broker_url), client_id=client_id)
        self._queue: queue.Queue[tuple[_Rule, dict[str, Any], Message] | None] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work, name=f"rules-worker-{k}", daemon=True) for k in range(max(1, workers))
        ]
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0, *, subscribe: bool = True) -> LocalRulesRunner:
        """Start the workers and (``subscribe``) connect to the broker and subscribe; without ``subscribe`` only
        :meth:`deliver` feeds the rules (a scale run that hands messages over directly)."""
        for w in self._workers:
            w.start()
        if not subscribe:
            return self
        self.transport.start()
        if not self.transport.wait_connected(timeout):
            raise RuntimeError("the rules runner could not connect to the broker")
        filters = sorted({r.query.topic_filter for r in self.rules} | {basic_ingest_filter(n) for n in self.by_name})
        for f in [self.transport.subscribe(t, self._on_message) for t in filters]:
            f.result(timeout)
        log.info("local IoT rules subscribed", extra={"filters": filters})
        return self

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        self.transport.stop()
        self.wait_idle(drain_timeout_s)
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout=5)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every received message has been handled (True) or the timeout passed (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- messages ---------------------------------------------------------------------------------
    def deliver(self, topic: str, payload: bytes, received_ms: int | None = None) -> int:
        """Run the rules a message triggers (also what the MQTT subscriptions call); returns how many.

        A Basic Ingest topic ``$aws/rules/<RuleName>/<topic>`` triggers that rule alone, on ``<topic>``; any other
        topic every rule whose ``FROM`` filter matches it."""
        received = int(time.time() * 1000) if received_ms is None else received_ms
        target = basic_ingest_target(topic)
        if target is not None:
            name, inner = target
            rule = self.by_name.get(name)
            if rule is None:
                self._count("rule_not_found")
                log.warning("Basic Ingest message for no enabled rule", extra={"topic": topic[:256]})
                return 0
            self._count("basic_ingest")
            self._trigger(rule, Message(topic=inner, payload=payload, received_ms=received))
            return 1
        msg = Message(topic=topic, payload=payload, received_ms=received)
        matched = 0
        for rule in self.rules:
            if rule.query.matches(topic):
                matched += 1
                self._trigger(rule, msg)
        return matched

    def _trigger(self, rule: _Rule, msg: Message) -> None:
        """Evaluate ``rule`` on ``msg`` and queue its actions (or run its error action)."""
        self._count("rules_triggered", f"triggered:{rule.spec.logical_id}")
        try:
            event = rule.query.evaluate(msg)
        except RuleEvaluationError as exc:
            self._count("rule_errors")
            self._error_action(rule, msg, str(exc))
            return
        with self._lock:
            self._pending += 1
        self._queue.put((rule, event, msg))

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.deliver(topic, payload)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            rule, event, msg = item
            try:
                if rule.firehose is not None:
                    self._put_record(rule, event, msg)
                if rule.target is not None:
                    self._invoke(rule, event)
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def _put_record(self, rule: _Rule, event: dict[str, Any], msg: Message) -> None:
        if rule.firehose is None:
            return
        record = firehose_record(rule.spec, event)
        try:
            rule.firehose(record)
        except Exception as exc:
            self._count("firehose_errors")
            self._error_action(rule, msg, f"Firehose put failed: {type(exc).__name__}: {exc}"[:300])
            return
        self._count("firehose_records")

    def _invoke(self, rule: _Rule, event: dict[str, Any]) -> None:
        if rule.target is None:
            return
        last: Exception | None = None
        for attempt in range(rule.retries + 1):
            try:
                result = rule.target(event)
            except Exception as exc:
                last = exc
                log.warning(
                    "rule action failed",
                    extra={
                        "rule": rule.spec.logical_id,
                        "attempt": attempt + 1,
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                    },
                )
                if attempt < rule.retries:
                    time.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                continue
            status = result.get("status") if isinstance(result, dict) else None
            self._count("invocations", f"outcome:{status or 'ok'}")
            return
        self._count("invocations", "failed_invocations")
        record = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "requestContext": {
                "functionArn": f"local:{rule.spec.function}",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": rule.retries + 1,
            },
            "requestPayload": event,
            "responsePayload": {"errorType": type(last).__name__, "errorMessage": str(last)[:1000]},
        }
        log.error("rule action failed after every retry", extra={"rule": rule.spec.logical_id})
        if self.failure_sink is not None:
            try:
                self.failure_sink(record)
            except Exception:
                log.exception("could not record a failed invocation")

    def _error_action(self, rule: _Rule, msg: Message, error: str) -> None:
        log.warning(
            "rule could not be evaluated", extra={"rule": rule.spec.logical_id, "topic": msg.topic, "error": error}
        )
        if self.error_sink is None or rule.spec.error_key is None:
            return
        key = rule.spec.error_key.replace("${topic()}", msg.topic).replace("${newuuid()}", str(uuid.uuid4()))
        body = json.dumps(
            {
                "ruleName": rule.spec.logical_id,
                "topic": msg.topic,
                "failures": [{"errorMessage": error}],
                "payload_b64": base64.b64encode(msg.payload).decode(),
            },
            separators=(",", ":"),
        ).encode()
        try:
            self.error_sink(key, body)
        except Exception:
            log.exception("the rule's error action failed")

    def _count(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self.counts[key] += 1

    def stats(self) -> dict[str, int]:
        """Counters: ``rules_triggered`` and ``triggered:<logical id>`` per rule, ``basic_ingest`` (messages that
        came through Basic Ingest), ``rule_not_found``, ``rule_errors``, ``firehose_records``, ``invocations``,
        ``outcome:<status>``, ``failed_invocations``, and ``pending`` (queued, not yet handled)."""
        with self._lock:
            return {**self.counts, "pending": self._pending}
