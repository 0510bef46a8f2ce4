"""What every part of the emulated nucleus shares: its state, threading helpers, authorization, errors.

:class:`EmulatorCore` declares the state the connection server (``connection``) and the operation
handlers (``ops_*``) use; :class:`~devkit.nucleus.server.NucleusEmulator` fills it in.
Request-argument helpers answer bad input with the InvalidArgumentsError the nucleus gives.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from cloud.local_stack.iot_sql import basic_ingest_target
from device_agent.uplink.transport import topic_matches
from devkit.nucleus.acl import MQTT_PROXY, AccessControl
from devkit.nucleus.cloud_shadow import CloudShadowService
from devkit.nucleus.config_store import ConfigStore
from devkit.nucleus.flavours import FlavourRules
from devkit.nucleus.recipe import interpolate_tree, thing_name_resolver
from devkit.nucleus.shadows import ShadowStore
from devkit.nucleus.streams import NS, Connection, Reply, Stream

log = logging.getLogger("devkit.nucleus.server")

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"  # noqa: S105 - the name of the variable, not a secret
SHADOW_MANAGER_COMPONENT = "aws.greengrass.ShadowManager"
MAX_IOT_PAYLOAD = 128 * 1024
MAX_TOPIC_BYTES = 256

T = TypeVar("T")
Handler = Callable[[Connection, int, dict[str, Any]], Reply]

mqtt_filter_matches = topic_matches  # the same MQTT filter rules as the uplink's transports


class IpcError(Exception):
    """A modeled error returned to the client (``shape`` without the ``aws.greengrass#`` prefix)."""

    def __init__(self, shape: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.shape = shape
        self.message = message
        self.fields = fields


@dataclass(frozen=True)
class PublishedMessage:
    """What a component published to "IoT Core"."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    component: str
    timestamp: float


@dataclass(frozen=True)
class Denial:
    component: str
    destination: str
    operation: str
    resource: str


def topic_without_basic_ingest_prefix(topic: str) -> str:
    """The topic as IoT Core limits it: a Basic Ingest topic ``$aws/rules/<rule name>/<topic>`` goes straight to that
    rule, and its prefix is not counted toward the 256-byte topic limit (AWS IoT developer guide, "Reducing
    messaging costs with Basic Ingest"; classic's ``mqttclient/IotCoreTopicValidator.java`` strips it before its
    length check, lite checks no topic length below 65,535 bytes, ``modules/iotcored/src/bus_server.c``)."""
    target = basic_ingest_target(topic)
    return topic if target is None else target[1]


def is_basic_ingest(topic: str) -> bool:
    """Whether ``topic`` is a Basic Ingest topic (its message reaches a rule, never a subscriber)."""
    return basic_ingest_target(topic) is not None


def valid_topic(topic: Any, *, is_filter: bool) -> str | None:
    """The reason a topic (or filter) is invalid, or None."""
    if not isinstance(topic, str) or not topic:
        return "topic must be a non-empty string"
    if len(topic_without_basic_ingest_prefix(topic).encode()) > MAX_TOPIC_BYTES:
        return f"topic exceeds {MAX_TOPIC_BYTES} bytes"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if not is_filter and ("+" in level or "#" in level):
            return "a publish topic must not contain wildcards"
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be the last level on its own"
        if "+" in level and level != "+":
            return "'+' must be a level on its own"
    return None


def topic_arg(req: dict[str, Any], field: str, *, is_filter: bool) -> str:
    """The request's topic (or filter) under ``field``; InvalidArgumentsError naming the problem."""
    topic = req.get(field)
    problem = valid_topic(topic, is_filter=is_filter)
    if problem:
        raise IpcError("InvalidArgumentsError", f"invalid {field}: {problem}")
    assert isinstance(topic, str)
    return topic


def qos_arg(raw: Any) -> int:
    if raw is None:
        return 1
    if raw in ("0", "1", 0, 1):
        return int(raw)
    raise IpcError("InvalidArgumentsError", f"invalid qos {raw!r}")


def b64_arg(raw: Any, field: str) -> bytes:
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise IpcError("InvalidArgumentsError", f"{field} must be base64 text")
    return base64.b64decode(raw, validate=True)


def key_path_arg(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise IpcError("InvalidArgumentsError", "keyPath must be a list of strings")
    return tuple(raw)


class EmulatorCore:
    """State and helpers shared by the connection server and the operation handlers."""

    thing_name: str
    component: str
    rules: FlavourRules
    configs: ConfigStore
    shadows: ShadowStore
    connects: int
    refused: int
    _tokens: dict[str, str]
    _published: list[PublishedMessage]
    _denials: list[Denial]
    _operations: list[tuple[str, str]]
    cloud_shadow: CloudShadowService
    _states: dict[str, str]
    _cond: threading.Condition
    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _conns: set[Connection]
    _forwarder: Any
    _forward_subs: dict[str, Future[None]]
    _stream_counts: dict[tuple[str, str], int]
    _shadow_generation: int
    _handlers: dict[str, Handler]

    def _stored_configuration(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """A component's configuration as this nucleus stores it (classic interpolates ``{iot:thingName}``)."""
        if self.rules.interpolate_configuration:
            return dict(interpolate_tree(configuration, thing_name_resolver(self.thing_name)))
        return configuration

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the emulator is not running")
        return self._loop

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            return fn(*args)
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return fut.result(10)

    def _track(self, stream: Stream, delta: int) -> None:
        key = (stream.kind, stream.topic_filter if stream.kind in ("iot", "pubsub") else "/".join(stream.key_path))
        with self._cond:
            self._stream_counts[key] = self._stream_counts.get(key, 0) + delta
            self._cond.notify_all()

    def _shadow_changed(self) -> None:
        with self._cond:
            self._shadow_generation += 1
            self._cond.notify_all()

    def _authorize(self, component: str, destination: str, operation: str, resource: str) -> None:
        try:
            # as stored: classic interpolated {iot:thingName} with the configuration; lite v2.6.0 never does
            # (ipc_authz.c), so such a resource stays literal and matches no real topic
            conf = {"accessControl": self.configs.tree(component).get("accessControl")}
            acl = AccessControl.from_configuration(conf)
            allowed = acl.allows(destination, NS + operation, resource, self.rules.authorization)
        except ValueError:
            allowed = False
        if allowed:
            return
        with self._cond:
            self._denials.append(Denial(component, destination, NS + operation, resource))
        log.warning(
            "IPC request not authorized",
            extra={"component": component, "destination": destination, "operation": operation, "resource": resource},
        )
        detail = (
            f"Principal {component} is not authorized to perform {destination}:{NS}{operation} on resource {resource}"
        )
        if destination == MQTT_PROXY:
            detail = f"Authorization failed with error {detail}"
        raise IpcError("UnauthorizedError", detail)
