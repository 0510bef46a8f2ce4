"""A local stand-in for the Greengrass nucleus' IPC server, for development and tests.

It listens on a Unix socket and speaks the event-stream RPC protocol of Greengrass IPC (see ``wire``), so
the unmodified ``GreengrassCoreIPCClientV2`` (and anything built on it) connects to it as to a real
nucleus. What it implements:

* **connect**: ``:version`` 0.1.0 and ``{"authToken": <SVCUID>}``; an unknown token gets a CONNECT_ACK
  without the accepted flag and the connection is closed; PING is answered.
* **IoT Core (mqttproxy)**: PublishToIoTCore is recorded (:attr:`NucleusEmulator.published`, in order)
  and optionally forwarded to a real MQTT broker; SubscribeToIoTCore receives what
  :meth:`NucleusEmulator.deliver_from_cloud` injects, what components publish to "IoT Core" (as the
  cloud broker echoes it), or, when forwarding, what the broker delivers.
* **local pub/sub**: PublishToTopic / SubscribeToTopic with MQTT wildcards and receive modes.
* **ShadowManager**: Get/Update/DeleteThingShadow with its semantics (see ``shadows``); updates publish
  ``…/update/delta|documents|accepted`` (or ``…/rejected``) on local pub/sub as binary JSON messages.
* **configuration**: GetConfiguration, UpdateConfiguration, SubscribeToConfigurationUpdate,
  SubscribeToValidateConfigurationUpdates (accepted, never fires), UpdateState.
* **authorization**: every IoT Core, pub/sub and shadow request is checked against the calling
  component's ``accessControl`` (from its recipe's DefaultConfiguration, ``{iot:thingName}`` substituted
  as ``interpolateComponentConfiguration`` does); refusals are UnauthorizedError and are recorded in
  :attr:`NucleusEmulator.denials`.

Operations it does not implement are answered with ServiceError. Responses to a request always precede
the stream events the request causes (as the nucleus' ordered executors make it in practice).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from device_agent.greengrass.emulator.acl import (
    MQTT_PROXY,
    PUBSUB,
    SHADOW_MANAGER,
    AccessControl,
    shadow_resource,
)
from device_agent.greengrass.emulator.config_store import ConfigStore
from device_agent.greengrass.emulator.recipe import (
    component_name,
    default_configuration,
    interpolate_tree,
    load_recipe,
    thing_name_resolver,
)
from device_agent.greengrass.emulator.shadows import DEFAULT_MAX_DOCUMENT_BYTES, ShadowRequestError, ShadowStore
from device_agent.greengrass.emulator.wire import (
    CONTENT_TYPE,
    JSON,
    MAX_MESSAGE_LEN,
    OPERATION,
    RPC_VERSION,
    SERVICE_MODEL_TYPE,
    VERSION,
    FrameTooLarge,
    Header,
    Message,
    MessageDecoder,
    MessageFlag,
    MessageType,
    WireError,
    rpc_message,
)
from device_agent.uplink.transport import topic_matches

log = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"  # noqa: S105 - the name of the variable, not a secret
NS = "aws.greengrass#"
SHADOW_MANAGER_COMPONENT = "aws.greengrass.ShadowManager"
MAX_IOT_PAYLOAD = 128 * 1024
MAX_TOPIC_BYTES = 256
UNIX_PATH_MAX = 107
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")

T = TypeVar("T")


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


@dataclass
class _Reply:
    model: str
    body: dict[str, Any]
    stream: _Stream | None = None


class _Stream:
    """An open operation stream to which the emulator pushes events."""

    def __init__(
        self,
        conn: _Connection,
        stream_id: int,
        kind: str,
        event_model: str,
        *,
        topic_filter: str = "",
        receive_all: bool = True,
        component: str = "",
        key_path: tuple[str, ...] = (),
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.kind = kind
        self.event_model = event_model
        self.topic_filter = topic_filter
        self.receive_all = receive_all
        self.component = component
        self.key_path = key_path

    def push(self, body: dict[str, Any]) -> None:
        self.conn.send_app(self.stream_id, self.event_model, body, terminate=False)


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.component: str | None = None
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.closing = False
        self.closed = False
        #: refused at CONNECT: let the client hang up first, so it sees the refusal rather than a closed socket
        self.linger = False

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def send_app(self, stream_id: int, model: str, body: dict[str, Any], *, terminate: bool) -> None:
        headers = [Header.string(CONTENT_TYPE, JSON), Header.string(SERVICE_MODEL_TYPE, model)]
        self.send(
            rpc_message(
                MessageType.APPLICATION_MESSAGE,
                stream_id,
                flags=MessageFlag.TERMINATE_STREAM if terminate else MessageFlag.NONE,
                headers=headers,
                payload=json.dumps(body, separators=(",", ":")).encode(),
            )
        )

    def send_error(self, stream_id: int, shape: str, message: str, fields: Mapping[str, Any]) -> None:
        headers = [Header.string(CONTENT_TYPE, JSON), Header.string(SERVICE_MODEL_TYPE, NS + shape)]
        body = {"message": message, **fields}
        self.send(
            rpc_message(
                MessageType.APPLICATION_ERROR,
                stream_id,
                flags=MessageFlag.TERMINATE_STREAM,
                headers=headers,
                payload=json.dumps(body, separators=(",", ":")).encode(),
            )
        )

    def protocol_error(self, message: str) -> None:
        self.send(
            rpc_message(
                MessageType.PROTOCOL_ERROR,
                0,
                headers=[Header.string(CONTENT_TYPE, JSON)],
                payload=json.dumps({"message": message}).encode(),
            )
        )
        self.closing = True


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


mqtt_filter_matches = topic_matches  # the same MQTT filter rules as the uplink's transports


def _valid_topic(topic: Any, *, is_filter: bool) -> str | None:
    """The reason a topic (or filter) is invalid, or None."""
    if not isinstance(topic, str) or not topic:
        return "topic must be a non-empty string"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
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


def _topic_arg(req: dict[str, Any], field: str, *, is_filter: bool) -> str:
    """The request's topic (or filter) under ``field``; InvalidArgumentsError naming the problem."""
    topic = req.get(field)
    problem = _valid_topic(topic, is_filter=is_filter)
    if problem:
        raise IpcError("InvalidArgumentsError", f"invalid {field}: {problem}")
    assert isinstance(topic, str)
    return topic


class NucleusEmulator:
    """The emulated nucleus; see the module docstring. Thread-safe; use as a context manager or start/stop."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        thing_name: str,
        recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        component: str | None = None,
        svcuid: str | None = None,
        configuration: Mapping[str, Any] | None = None,
        forward_mqtt: str | None = None,
        max_shadow_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        max_ipc_message_bytes: int | None = None,
    ) -> None:
        # -- message size limit (nucleus lite: GGL_IPC_MAX_MSG_LEN = 10,000) -----------------------
        #: a frame larger than this (prelude to CRC) closes the connection without a reply, as lite's ggipcd
        #: does; None = no limit beyond the event-stream format's own
        self.max_ipc_message_bytes = max_ipc_message_bytes
        self.oversized_closes = 0
        self.socket_path = str(socket_path)
        if len(os.fsencode(self.socket_path)) > UNIX_PATH_MAX:
            raise ValueError(f"socket path is longer than {UNIX_PATH_MAX} bytes: {self.socket_path}")
        self.thing_name = thing_name
        self.forward_url = forward_mqtt
        self.configs = ConfigStore()
        self.shadows = ShadowStore(max_shadow_bytes)
        self._tokens: dict[str, str] = {}
        if recipe is not None:
            data = load_recipe(recipe if isinstance(recipe, Mapping) else Path(recipe))
            name = component or component_name(data)
            conf = interpolate_tree(default_configuration(data), thing_name_resolver(thing_name))
        elif component is not None:
            name, conf = component, {}
        else:
            raise ValueError("give a recipe or a component name")
        if configuration is not None:
            conf = interpolate_tree(dict(configuration), thing_name_resolver(thing_name))
        self.component = name
        self.svcuid = svcuid or secrets.token_urlsafe(24)
        self._tokens[self.svcuid] = name
        self.configs.set(name, conf, time.time())
        AccessControl.from_configuration(conf)  # fail early on a malformed accessControl

        self._published: list[PublishedMessage] = []
        self._denials: list[Denial] = []
        self._states: dict[str, str] = {}
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._forwarder: Any = None
        self._stream_counts: dict[tuple[str, str], int] = {}
        self._shadow_generation = 0
        self._forward_subs: dict[str, Future[None]] = {}
        self.connects = 0
        self.refused = 0
        self._handlers: dict[str, Callable[[_Connection, int, dict[str, Any]], _Reply]] = {
            "PublishToIoTCore": self._op_publish_to_iot_core,
            "SubscribeToIoTCore": self._op_subscribe_to_iot_core,
            "PublishToTopic": self._op_publish_to_topic,
            "SubscribeToTopic": self._op_subscribe_to_topic,
            "GetThingShadow": self._op_get_thing_shadow,
            "UpdateThingShadow": self._op_update_thing_shadow,
            "DeleteThingShadow": self._op_delete_thing_shadow,
            "ListNamedShadowsForThing": self._op_list_named_shadows,
            "GetConfiguration": self._op_get_configuration,
            "UpdateConfiguration": self._op_update_configuration,
            "SubscribeToConfigurationUpdate": self._op_subscribe_to_configuration_update,
            "SubscribeToValidateConfigurationUpdates": self._op_subscribe_to_validate,
            "UpdateState": self._op_update_state,
        }

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> NucleusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NucleusEmulator:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="gg-nucleus-emulator", daemon=True)
        self._thread.start()
        if self.forward_url:
            self._start_forwarder(self.forward_url)
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        log.info("nucleus emulator listening", extra={"socket": self.socket_path, "component": self.component})
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None
        self._thread = None
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def restart(self) -> None:
        """Drop every connection and the listening socket, then listen again (a nucleus restart).

        State (shadows, configuration, records, tokens) is kept."""
        loop = self._require_loop()
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)

    def env(self) -> dict[str, str]:
        """The variables a component process gets from the nucleus."""
        return {TOKEN_ENV: self.svcuid, SOCKET_ENV: self.socket_path, "AWS_IOT_THING_NAME": self.thing_name}

    def add_component(self, name: str, configuration: Mapping[str, Any] | None = None) -> str:
        """Register another component (e.g. a test peer); returns its SVCUID."""
        token = secrets.token_urlsafe(24)
        conf = interpolate_tree(dict(configuration or {}), thing_name_resolver(self.thing_name))
        AccessControl.from_configuration(conf)

        def _add() -> None:
            self._tokens[token] = name
            self.configs.set(name, conf, time.time())

        self._call(_add)
        return token

    # -- inspection (any thread) ------------------------------------------------------------------
    @property
    def published(self) -> list[PublishedMessage]:
        with self._cond:
            return list(self._published)

    @property
    def denials(self) -> list[Denial]:
        with self._cond:
            return list(self._denials)

    def clear_published(self) -> None:
        with self._cond:
            self._published.clear()

    def wait_for(self, predicate: Callable[[list[PublishedMessage]], bool], timeout: float) -> bool:
        """Block until ``predicate(published)`` is true (re-checked on every new publish) or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._published)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_connections(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``connects`` (accepted connections so far) reaches ``count``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connects < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def subscriptions(self, kind: str, topic_filter: str = "") -> int:
        """Open streams of ``kind`` ("iot", "pubsub", "config", "validate") on ``topic_filter`` (for config:
        the key path joined with "/")."""
        with self._cond:
            return self._stream_counts.get((kind, topic_filter), 0)

    def wait_for_subscriptions(
        self, kind: str, topic_filter: str = "", count: int = 1, timeout: float = 10.0, *, exactly: bool = False
    ) -> bool:
        """Block until at least (or, with ``exactly``, precisely) ``count`` such streams are open."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                n = self._stream_counts.get((kind, topic_filter), 0)
                if n == count or (n > count and not exactly):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def _track(self, stream: _Stream, delta: int) -> None:
        key = (stream.kind, stream.topic_filter if stream.kind in ("iot", "pubsub") else "/".join(stream.key_path))
        with self._cond:
            self._stream_counts[key] = self._stream_counts.get(key, 0) + delta
            self._cond.notify_all()

    def wait_for_shadow(
        self,
        predicate: Callable[[dict[str, Any] | None], bool],
        shadow_name: str | None = None,
        thing_name: str | None = None,
        timeout: float = 10.0,
    ) -> bool:
        """Block until ``predicate(document or None)`` holds for the shadow (re-checked after every update)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._shadow_generation
            if predicate(self.shadow(thing_name, shadow_name)):  # not under the lock: the loop thread takes it
                return True
            with self._cond:
                while self._shadow_generation == seen:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)

    def _shadow_changed(self) -> None:
        with self._cond:
            self._shadow_generation += 1
            self._cond.notify_all()

    def forwarding_ready(self, topic_filter: str, timeout: float = 10.0) -> bool:
        """With ``forward_mqtt``: whether the broker accepted the subscription made for ``topic_filter``."""
        fut = self._call(self._forward_subs.get, topic_filter)
        if fut is None:
            return False
        try:
            fut.result(timeout)
        except Exception:
            return False
        return True

    def component_state(self, component: str | None = None) -> str | None:
        with self._cond:
            return self._states.get(component or self.component)

    # -- driving the emulated device from outside (any thread) ------------------------------------
    def deliver_from_cloud(self, topic: str, payload: bytes) -> None:
        """A message from IoT Core on ``topic``: delivered to matching SubscribeToIoTCore streams."""
        self._call(self._deliver_iot, topic, payload)

    def publish_local(self, topic: str, payload: bytes | Mapping[str, Any], source: str = "external") -> None:
        """Publish on local pub/sub as component ``source`` (bytes → binary message, mapping → JSON)."""
        self._call(self._deliver_local, topic, payload, source)

    def shadow(self, thing_name: str | None = None, shadow_name: str | None = None) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                return self.shadows.get(thing_name or self.thing_name, shadow_name)
            except ShadowRequestError:
                return None

        return self._call(_get)

    def update_shadow(
        self, document: Mapping[str, Any], shadow_name: str | None = None, thing_name: str | None = None
    ) -> dict[str, Any]:
        """Update a shadow as the cloud sync would (no authorization); publishes the local events."""

        def _update() -> dict[str, Any]:
            thing = thing_name or self.thing_name
            result = self.shadows.update(thing, shadow_name, json.dumps(document).encode())
            self._shadow_changed()
            for topic, payload in result.events:
                self._deliver_local(topic, payload, SHADOW_MANAGER_COMPONENT)
            return result.response

        return self._call(_update)

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        return self._call(self.configs.tree, component or self.component)

    def update_configuration(
        self, value_to_merge: Mapping[str, Any], key_path: Sequence[str] = (), component: str | None = None
    ) -> list[tuple[str, ...]]:
        """Merge configuration as a deployment would; notifies SubscribeToConfigurationUpdate streams."""
        target = component or self.component
        return self._call(self._merge_config, target, tuple(key_path), dict(value_to_merge), time.time())

    # -- internals: threading ---------------------------------------------------------------------
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

    async def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._handle, path=self.socket_path)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop accepting first, then drop the connections (wait_closed waits for them)
        for conn in list(self._conns):
            self._drop(conn)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _drop(self, conn: _Connection) -> None:
        conn.closed = True
        for stream in conn.streams.values():
            self._track(stream, -1)
        conn.streams.clear()
        self._conns.discard(conn)
        with contextlib.suppress(Exception):
            conn.writer.close()

    # -- internals: connections -------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer)
        self._conns.add(conn)
        decoder = MessageDecoder(self.max_ipc_message_bytes or MAX_MESSAGE_LEN)
        try:
            while not conn.closing and not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    messages = decoder.feed(data)
                except FrameTooLarge as exc:  # the size limit: close without a word, as ggipcd does
                    self._oversized(exc)
                    break
                except WireError as exc:
                    log.warning("malformed event-stream data; closing the connection", extra={"error": str(exc)})
                    conn.protocol_error(str(exc))
                    messages = []
                for msg in messages:
                    self._dispatch(conn, msg)
                    if conn.closing:
                        break
                await writer.drain()
                if decoder.oversized is not None and not conn.closing:  # after the messages before it
                    self._oversized(decoder.oversized)
                    break
            if conn.linger:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_until_eof(reader), 2.0)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            self._drop(conn)

    def _oversized(self, exc: FrameTooLarge) -> None:
        log.warning("IPC message exceeds the size limit; closing the connection", extra={"error": str(exc)})
        with self._cond:
            self.oversized_closes += 1
            self._cond.notify_all()

    def _dispatch(self, conn: _Connection, msg: Message) -> None:
        mtype, sid = msg.message_type, msg.stream_id
        if mtype is None or sid is None:
            conn.protocol_error("message without :message-type or :stream-id")
            return
        if conn.component is None:
            if mtype != MessageType.CONNECT or sid != 0:
                conn.protocol_error("the first message must be CONNECT")
                return
            self._on_connect(conn, msg)
            return
        if mtype == MessageType.PING:
            echo = [h for h in msg.headers if not h.name.startswith(":")]
            conn.send(rpc_message(MessageType.PING_RESPONSE, 0, headers=echo, payload=msg.payload))
        elif mtype == MessageType.PING_RESPONSE:
            pass
        elif mtype in (MessageType.APPLICATION_MESSAGE, MessageType.APPLICATION_ERROR) and sid > 0:
            self._on_stream_message(conn, msg, sid)
        else:
            conn.protocol_error(f"unexpected message type {mtype} on stream {sid}")

    def _on_connect(self, conn: _Connection, msg: Message) -> None:
        component = None
        if msg.get_str(VERSION) == RPC_VERSION:
            try:
                token = json.loads(msg.payload or b"{}").get("authToken")
            except (ValueError, AttributeError):
                token = None
            if isinstance(token, str):
                for known, name in self._tokens.items():
                    if hmac.compare_digest(known.encode(), token.encode()):
                        component = name
        if component is None:
            with self._cond:
                self.refused += 1
            log.warning("IPC connection refused: unknown auth token or wrong protocol version")
            conn.send(rpc_message(MessageType.CONNECT_ACK, 0, flags=MessageFlag.NONE))
            conn.closing = True
            conn.linger = True
            return
        conn.component = component
        with self._cond:  # counted before the ack is written: a client that sees the ack sees the count
            self.connects += 1
            self._cond.notify_all()
        conn.send(rpc_message(MessageType.CONNECT_ACK, 0, flags=MessageFlag.CONNECTION_ACCEPTED))
        log.info("IPC connection accepted", extra={"component": component})

    def _on_stream_message(self, conn: _Connection, msg: Message, sid: int) -> None:
        if sid in conn.streams:
            if msg.flags & MessageFlag.TERMINATE_STREAM:
                self._track(conn.streams.pop(sid), -1)  # the client closed its subscription
            return
        if sid <= conn.last_stream_id:
            return  # a late message on a stream that is already closed
        conn.last_stream_id = sid
        if msg.flags & MessageFlag.TERMINATE_STREAM:
            return  # a request the client already gave up on (the nucleus ignores these too)
        operation = msg.get_str(OPERATION) or ""
        name = operation.removeprefix(NS)
        assert conn.component is not None
        handler = self._handlers.get(name) if operation.startswith(NS) else None
        if handler is None:
            unsupported = f"{operation or '(no operation)'} is not supported by the emulator"
            conn.send_error(sid, "ServiceError", unsupported, {})
            return
        try:
            request = json.loads(msg.payload) if msg.payload else {}
            if not isinstance(request, dict):
                raise IpcError("InvalidArgumentsError", "the request must be a JSON object")
            reply = handler(conn, sid, request)
        except IpcError as exc:
            conn.send_error(sid, exc.shape, exc.message, exc.fields)
            return
        except (ValueError, binascii.Error) as exc:
            conn.send_error(sid, "InvalidArgumentsError", f"malformed request: {exc}", {})
            return
        except Exception as exc:  # a bug in the emulator: answer like the nucleus does, keep serving
            log.exception("emulator operation failed", extra={"operation": name})
            conn.send_error(sid, "ServiceError", f"{type(exc).__name__}: {exc}", {})
            return
        if reply.stream is not None:  # registered first (nothing can push to it before the response below)
            conn.streams[sid] = reply.stream
            self._track(reply.stream, +1)
        conn.send_app(sid, reply.model, reply.body, terminate=reply.stream is None)

    # -- internals: authorization -----------------------------------------------------------------
    def _authorize(self, component: str, destination: str, operation: str, resource: str) -> None:
        try:
            acl = AccessControl.from_configuration(self.configs.tree(component))
            allowed = acl.allows(destination, NS + operation, resource)
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

    # -- operations: IoT Core ---------------------------------------------------------------------
    @staticmethod
    def _qos(raw: Any) -> int:
        if raw is None:
            return 1
        if raw in ("0", "1", 0, 1):
            return int(raw)
        raise IpcError("InvalidArgumentsError", f"invalid qos {raw!r}")

    @staticmethod
    def _b64(raw: Any, field: str) -> bytes:
        if raw is None:
            return b""
        if not isinstance(raw, str):
            raise IpcError("InvalidArgumentsError", f"{field} must be base64 text")
        return base64.b64decode(raw, validate=True)

    def _op_publish_to_iot_core(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        topic = _topic_arg(req, "topicName", is_filter=False)
        qos = self._qos(req.get("qos"))
        payload = self._b64(req.get("payload"), "payload")
        if len(payload) > MAX_IOT_PAYLOAD:
            raise IpcError("InvalidArgumentsError", f"payload exceeds {MAX_IOT_PAYLOAD} bytes")
        self._authorize(conn.component, MQTT_PROXY, "PublishToIoTCore", topic)
        record = PublishedMessage(topic, payload, qos, bool(req.get("retain")), conn.component, time.time())
        with self._cond:
            self._published.append(record)
            self._cond.notify_all()
        if self._forwarder is not None:
            self._forwarder.publish(topic, payload)
        else:
            loop = self._require_loop()
            loop.call_soon(self._deliver_iot, topic, payload)  # the cloud echoes it to subscribers
        return _Reply(NS + "PublishToIoTCoreResponse", {})

    def _op_subscribe_to_iot_core(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        topic = _topic_arg(req, "topicName", is_filter=True)
        self._qos(req.get("qos"))
        self._authorize(conn.component, MQTT_PROXY, "SubscribeToIoTCore", topic)
        if self._forwarder is not None and topic not in self._forward_subs:
            self._forward_subs[topic] = self._forwarder.subscribe(topic, self.deliver_from_cloud)
        stream = _Stream(conn, sid, "iot", NS + "IoTCoreMessage", topic_filter=topic, component=conn.component)
        return _Reply(NS + "SubscribeToIoTCoreResponse", {}, stream)

    def _deliver_iot(self, topic: str, payload: bytes) -> None:
        body = {"message": {"topicName": topic, "payload": base64.b64encode(payload).decode()}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind == "iot" and mqtt_filter_matches(stream.topic_filter, topic):
                    stream.push(body)

    # -- operations: local pub/sub ----------------------------------------------------------------
    def _op_publish_to_topic(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        topic = _topic_arg(req, "topic", is_filter=False)
        message = req.get("publishMessage") or {}
        if not isinstance(message, dict):
            raise IpcError("InvalidArgumentsError", "publishMessage must be an object")
        self._authorize(conn.component, PUBSUB, "PublishToTopic", topic)
        content: bytes | Mapping[str, Any]
        if isinstance(message.get("jsonMessage"), dict):
            content = message["jsonMessage"].get("message") or {}
            if not isinstance(content, Mapping):
                raise IpcError("InvalidArgumentsError", "jsonMessage.message must be an object")
        elif isinstance(message.get("binaryMessage"), dict):
            content = self._b64(message["binaryMessage"].get("message"), "binaryMessage.message")
        else:
            raise IpcError("InvalidArgumentsError", "publishMessage needs jsonMessage or binaryMessage")
        self._require_loop().call_soon(self._deliver_local, topic, content, conn.component)
        return _Reply(NS + "PublishToTopicResponse", {})

    def _op_subscribe_to_topic(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        topic = _topic_arg(req, "topic", is_filter=True)
        mode = req.get("receiveMode")
        if mode not in (None, "RECEIVE_ALL_MESSAGES", "RECEIVE_MESSAGES_FROM_OTHERS"):
            raise IpcError("InvalidArgumentsError", f"invalid receiveMode {mode!r}")
        self._authorize(conn.component, PUBSUB, "SubscribeToTopic", topic)
        # the nucleus' default: a wildcard filter does not get the subscriber's own messages
        receive_all = ("+" not in topic and "#" not in topic) if mode is None else mode == "RECEIVE_ALL_MESSAGES"
        stream = _Stream(
            conn,
            sid,
            "pubsub",
            NS + "SubscriptionResponseMessage",
            topic_filter=topic,
            receive_all=receive_all,
            component=conn.component,
        )
        return _Reply(NS + "SubscribeToTopicResponse", {}, stream)

    def _deliver_local(self, topic: str, content: bytes | Mapping[str, Any], source: str) -> None:
        context = {"topic": topic}
        if isinstance(content, bytes | bytearray):
            body = {"binaryMessage": {"message": base64.b64encode(bytes(content)).decode(), "context": context}}
        else:
            body = {"jsonMessage": {"message": dict(content), "context": context}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind != "pubsub" or not mqtt_filter_matches(stream.topic_filter, topic):
                    continue
                if not stream.receive_all and stream.component == source:
                    continue
                stream.push(body)

    # -- operations: ShadowManager ----------------------------------------------------------------
    def _shadow_target(self, conn: _Connection, req: dict[str, Any], operation: str) -> tuple[str, str | None]:
        assert conn.component is not None
        thing = req.get("thingName")
        shadow = req.get("shadowName")
        if not isinstance(thing, str) or not thing:
            raise IpcError("InvalidArgumentsError", "ThingName absent in request")
        if shadow is not None and not isinstance(shadow, str):
            raise IpcError("InvalidArgumentsError", "shadowName must be a string")
        for value in (thing, shadow or ""):
            if len(value) > 128 or any(c not in _NAME_CHARS for c in value):
                raise IpcError("InvalidArgumentsError", f"invalid thing or shadow name {value!r}")
        self._authorize(conn.component, SHADOW_MANAGER, operation, shadow_resource(thing, shadow))
        return thing, shadow or None

    def _publish_events(self, events: list[tuple[str, bytes]]) -> None:
        loop = self._require_loop()
        for topic, payload in events:
            loop.call_soon(self._deliver_local, topic, payload, SHADOW_MANAGER_COMPONENT)

    def _op_get_thing_shadow(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        thing, shadow = self._shadow_target(conn, req, "GetThingShadow")
        try:
            doc = self.shadows.get(thing, shadow)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "get", exc)])
            raise IpcError(exc.kind, exc.message, resourceType="Shadow") from None
        payload = json.dumps(doc, separators=(",", ":")).encode()
        prefix = shadow_resource(thing, shadow)
        self._publish_events([(f"{prefix}/get/accepted", payload)])
        return _Reply(NS + "GetThingShadowResponse", {"payload": base64.b64encode(payload).decode()})

    def _op_update_thing_shadow(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        thing, shadow = self._shadow_target(conn, req, "UpdateThingShadow")
        payload = self._b64(req.get("payload"), "payload")
        try:
            result = self.shadows.update(thing, shadow, payload)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "update", exc)])
            raise IpcError(exc.kind, exc.message) from None
        self._shadow_changed()
        self._publish_events(result.events)
        body = json.dumps(result.response, separators=(",", ":")).encode()
        return _Reply(NS + "UpdateThingShadowResponse", {"payload": base64.b64encode(body).decode()})

    def _op_delete_thing_shadow(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        thing, shadow = self._shadow_target(conn, req, "DeleteThingShadow")
        try:
            result = self.shadows.delete(thing, shadow)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "delete", exc)])
            raise IpcError(exc.kind, exc.message, resourceType="Shadow") from None
        self._shadow_changed()
        self._publish_events(result.events)
        body = json.dumps(result.response, separators=(",", ":")).encode()
        return _Reply(NS + "DeleteThingShadowResponse", {"payload": base64.b64encode(body).decode()})

    def _op_list_named_shadows(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        thing = req.get("thingName")
        if not isinstance(thing, str) or not thing:
            raise IpcError("InvalidArgumentsError", "ThingName absent in request")
        self._authorize(conn.component, SHADOW_MANAGER, "ListNamedShadowsForThing", shadow_resource(thing, None))
        return _Reply(
            NS + "ListNamedShadowsForThingResponse",
            {"results": self.shadows.names(thing), "timestamp": time.time()},
        )

    # -- operations: configuration ----------------------------------------------------------------
    @staticmethod
    def _key_path(raw: Any) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
            raise IpcError("InvalidArgumentsError", "keyPath must be a list of strings")
        return tuple(raw)

    def _op_get_configuration(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        component = req.get("componentName") or conn.component
        key_path = self._key_path(req.get("keyPath"))
        if not isinstance(component, str) or not self.configs.has(component):
            raise IpcError("ResourceNotFoundError", f"Component {component} not found", resourceType="Component")
        try:
            value = self.configs.get(component, key_path)
        except KeyError:
            raise IpcError("ResourceNotFoundError", "Key not found", resourceType="Configuration") from None
        return _Reply(NS + "GetConfigurationResponse", {"componentName": component, "value": value})

    def _op_update_configuration(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        key_path = self._key_path(req.get("keyPath"))
        value = req.get("valueToMerge")
        stamp = req.get("timestamp")
        if not isinstance(value, dict):
            raise IpcError("InvalidArgumentsError", "valueToMerge must be an object")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise IpcError("InvalidArgumentsError", "timestamp is required")
        self._merge_config(conn.component, key_path, value, float(stamp))
        return _Reply(NS + "UpdateConfigurationResponse", {})

    def _merge_config(
        self, component: str, key_path: tuple[str, ...], value: dict[str, Any], stamp: float
    ) -> list[tuple[str, ...]]:
        changed = self.configs.merge(component, key_path, value, stamp)
        loop = self._require_loop()
        for path in changed:
            loop.call_soon(self._notify_config, component, path)
        return changed

    def _notify_config(self, component: str, path: tuple[str, ...]) -> None:
        body = {"configurationUpdateEvent": {"componentName": component, "keyPath": list(path)}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind != "config" or stream.component != component:
                    continue
                n = min(len(stream.key_path), len(path))
                if stream.key_path[:n] == path[:n]:
                    stream.push(body)

    def _op_subscribe_to_configuration_update(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        component = req.get("componentName") or conn.component
        if not isinstance(component, str) or not self.configs.has(component):
            raise IpcError("ResourceNotFoundError", f"Component {component} not found", resourceType="Component")
        key_path = self._key_path(req.get("keyPath"))
        stream = _Stream(conn, sid, "config", NS + "ConfigurationUpdateEvents", component=component, key_path=key_path)
        return _Reply(NS + "SubscribeToConfigurationUpdateResponse", {}, stream)

    def _op_subscribe_to_validate(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        stream = _Stream(conn, sid, "validate", NS + "ValidateConfigurationUpdateEvents", component=conn.component)
        return _Reply(NS + "SubscribeToValidateConfigurationUpdatesResponse", {}, stream)

    def _op_update_state(self, conn: _Connection, sid: int, req: dict[str, Any]) -> _Reply:
        assert conn.component is not None
        state = req.get("state")
        if state not in ("RUNNING", "ERRORED"):
            raise IpcError("InvalidArgumentsError", f"invalid state {state!r}")
        with self._cond:
            self._states[conn.component] = str(state)
            self._cond.notify_all()
        return _Reply(NS + "UpdateStateResponse", {})

    # -- forwarding to a real broker --------------------------------------------------------------
    def _start_forwarder(self, url: str) -> None:
        from device_agent.config import MqttSettings
        from device_agent.uplink.mqtt_transport import MqttTransport

        transport = MqttTransport(MqttSettings(url=url), client_id=f"gg-emulator-{self.thing_name}"[:128])
        transport.start()
        self._forwarder = transport
        log.info("forwarding IoT Core traffic to a broker", extra={"broker": url})


def short_socket_path(prefix: str = "gg") -> str:
    """A fresh socket path short enough for AF_UNIX (pytest's tmp paths often are not)."""
    import shutil
    import tempfile

    for base in (None, "/tmp"):  # noqa: S108 - a private mkdtemp folder; only if TMPDIR is too long
        directory = tempfile.mkdtemp(prefix=prefix, dir=base)
        path = os.path.join(directory, "ipc.socket")
        if len(os.fsencode(path)) <= UNIX_PATH_MAX:
            return path
        shutil.rmtree(directory, ignore_errors=True)
    raise OSError("cannot make a socket path short enough for AF_UNIX")
