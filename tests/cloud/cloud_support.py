"""Helpers of the cloud tests: template loading and intrinsic-function resolution, IoT rule events, real
device messages from the agent running on the simulator."""

from __future__ import annotations

import ast
import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cfnlint.decode import decode_str

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.registry import create_source

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "cloud" / "template.yaml"
ACCOUNT = "123456789012"
REGION = "us-east-1"
NO_VALUE = object()


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    tpl, matches = decode_str(path.read_text())
    assert not matches, matches
    return plain(tpl)


def plain(node: Any) -> Any:
    """cfn-lint's node classes → plain dicts/lists/strings."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


class Resolver:
    """Evaluates CloudFormation intrinsic functions against parameters and what moto created."""

    def __init__(
        self,
        template: dict[str, Any],
        params: dict[str, str],
        stack_name: str,
        physical_ids: dict[str, str],
        get_att: Callable[[str, str], str],
    ) -> None:
        self.template = template
        self.params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
        self.params.update(params)
        self.pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.physical_ids = physical_ids
        self.get_att = get_att

    def condition(self, name: str) -> bool:
        return bool(self.eval(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.physical_ids:
            return self.physical_ids[name]
        raise KeyError(f"Ref to {name} (not created)")

    def sub(self, text: str, extra: dict[str, Any] | None = None) -> str:
        extra = extra or {}

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in extra:
                return str(extra[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attr = name.split(".", 1)
                return str(self.get_att(logical, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", repl, text)

    def eval(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.eval(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attr)
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    return self.sub(arg[0], {k: self.eval(v) for k, v in arg[1].items()})
                return self.sub(arg)
            if key == "Fn::Join":
                return arg[0].join(str(x) for x in self.eval(arg[1]))
            if key == "Fn::Split":
                return str(self.eval(arg[1])).split(arg[0])
            if key == "Fn::Select":
                return self.eval(arg[1])[int(self.eval(arg[0]))]
            if key == "Fn::If":
                return self.eval(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return self.eval(arg[0]) == self.eval(arg[1])
            if key == "Fn::Not":
                return not self.eval(arg[0])
            if key == "Fn::And":
                return all(self.eval(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
        return {k: v for k, v in ((k, self.eval(v)) for k, v in node.items()) if v is not NO_VALUE}

    def properties(self, logical: str) -> dict[str, Any]:
        return dict(self.eval(self.template["Resources"][logical].get("Properties", {})))


def policy_document(value: Any) -> dict[str, Any]:
    """A policy document as an IAM/IoT API returns it (moto's CloudFormation stores a Python repr)."""
    if isinstance(value, dict):
        return value
    try:
        return dict(json.loads(value))
    except ValueError:
        return dict(ast.literal_eval(value))


def lower_camel(node: Any) -> Any:
    """CloudFormation's PascalCase property names → the lowerCamel names of REST-JSON APIs (IoT)."""
    if isinstance(node, dict):
        return {(k[0].lower() + k[1:]): lower_camel(v) for k, v in node.items()}
    if isinstance(node, list):
        return [lower_camel(v) for v in node]
    return node


def rule_event(topic: str, payload: bytes, received_ms: int | None = None) -> dict[str, Any]:
    """What the template's IoT rule SQL hands the ingest Lambda for a message on ``topic``."""
    parts = topic.split("/")
    return {
        "payload_b64": base64.b64encode(payload).decode(),
        "rule_topic": topic,
        "rule_thing": parts[1] if len(parts) > 1 else None,
        "rule_kind": parts[2] if len(parts) > 2 else None,
        "rule_received_ms": received_ms if received_ms is not None else int(time.time() * 1000),
        "rule_client_id": parts[1] if len(parts) > 1 else None,
    }


def run_agent(
    thing: str, hours: float, start_ts: float, source: str = "simulator", **sim: Any
) -> list[tuple[str, bytes]]:
    """The real agent (default config) on the simulator for ``hours`` simulated hours → what it publishes."""
    config = AgentConfig(
        thing_name=thing,
        source={
            "url": source,
            "simulator": {"time_acceleration": 1_000_000.0, "start_ts": start_ts, **sim},
        },
    )
    transport = MemoryTransport()
    agent = Agent(config, create_source(config.source.url, config.source), transport, Spool(":memory:"))
    agent.run(threading.Event(), max_samples=int(hours * 3600 / config.source.sample_interval_s))
    return list(transport.published)


def routes_to_ingest(topic: str) -> bool:
    """Whether a template rule whose filter matches ``topic`` invokes the ingest Lambda (telemetry's does not)."""
    from cloud.local_stack.iot_sql import RuleQuery
    from cloud.local_stack.template import load_template as load_cfn
    from cloud.local_stack.template import topic_rules

    return any(
        r.function == "IngestFunction" and not r.disabled and RuleQuery(r.sql).matches(topic)
        for r in topic_rules(load_cfn())
    )


def lake_transform(aws: dict[str, Any], environment: dict[str, str]) -> Any:
    """The lake stream's transform with the function's environment (as CloudFormation set it) on ``aws``'s clients."""
    from cloud.lake_expand.handler import LakeTransform, TransformSettings

    return LakeTransform(TransformSettings.from_env(environment), dynamodb=aws["dynamodb"], s3=aws["s3"])


def deliver_to_lake(
    s3: Any,
    bucket: str,
    messages: list[tuple[str, bytes]],
    received_ms: int | None = None,
    transform: Any = None,
) -> Any:
    """What the template's rules' Firehose actions and its stream make of ``messages``: each matching rule's record
    (the local rules runner's SQL and record format) put to the stream's buffered delivery
    (:class:`cloud.local_stack.firehose.BufferedFirehose`, through ``transform``: a
    :class:`cloud.lake_expand.handler.LakeTransform`, else the record expansion alone), flushed at the end.
    Returns the stream."""
    from cloud.local_stack.firehose import BufferedFirehose
    from cloud.local_stack.iot_sql import Message, RuleQuery
    from cloud.local_stack.rules import firehose_record
    from cloud.local_stack.template import firehose_streams, topic_rules
    from cloud.local_stack.template import load_template as load_cfn

    tpl = load_cfn()
    (spec,) = firehose_streams(tpl).values()
    stream = BufferedFirehose(spec, s3, bucket, transform=transform)
    rules = [(r, RuleQuery(r.sql)) for r in topic_rules(tpl) if r.firehose is not None and not r.disabled]
    at = received_ms if received_ms is not None else int(time.time() * 1000)
    for topic, payload in messages:
        for rule, query in rules:
            if query.matches(topic):
                stream.put(firehose_record(rule, query.evaluate(Message(topic, payload, at))))
    stream.flush()
    return stream


@contextmanager
def collected_emf() -> Iterator[list[dict[str, Any]]]:
    """The embedded-metric-format records (:func:`cloud.notify.emit_metrics`) logged inside the block, parsed."""
    import logging

    records: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(record.getMessage()))

    emf = logging.getLogger("battwin.emf")
    handler = Collect()
    emf.addHandler(handler)
    try:
        yield records
    finally:
        emf.removeHandler(handler)
