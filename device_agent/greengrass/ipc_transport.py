"""The Transport (``device_agent.uplink.transport``) over Greengrass IPC: the nucleus talks to IoT Core.

* ``publish`` → PublishToIoTCore with QoS 1 (AT_LEAST_ONCE); the future resolves when the nucleus
  answers. The nucleus answers once it has taken the message (into its MQTT spooler or onto the wire,
  depending on its version and connectivity) — its spooler is in memory by default, so the agent's
  durable SQLite spool stays in front and a message leaves it only after this acknowledgement.
* Size: a PublishToIoTCore request travels as one event-stream frame whose JSON carries the payload in
  base64; nucleus lite refuses frames over 10,000 bytes (``GGL_IPC_MAX_MSG_LEN``: its ggipcd closes the
  socket). :meth:`IpcTransport.max_payload_bytes` is the largest payload whose frame fits
  ``max_message_bytes`` (10,000 by default, on both nuclei, so the component runs unchanged on either):
  ``3 * ((max_message_bytes - 252 - len(topic)) // 4)``, where 252 bytes are the frame's fixed cost, measured
  with the awsiotsdk client (prelude 12 + headers 192 + JSON keys and quotes 44 + CRC 4); e.g. 7,287 bytes on
  ``battwin/gg-test-thing/telemetry``. A bigger publish fails with MessageTooLarge and is not sent.
* ``subscribe`` → SubscribeToIoTCore; subscriptions are made again after every reconnection.
* ``connected`` / ``wait_connected`` reflect the IPC connection to the nucleus (not the nucleus' own
  connection to IoT Core, which it manages and buffers for us); the connection is re-established
  automatically if the nucleus restarts.
* A publish the nucleus refuses (UnauthorizedError for a topic outside the component's accessControl,
  ServiceError for a full spooler, InvalidArgumentsError …) fails only after ``refused_retry_delay_s``, so a
  misconfiguration makes the publisher retry slowly instead of spinning; the refusal is logged (once per topic
  and error) as what it is (:func:`describe_refusal`).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from device_agent.greengrass.connection import ClientProvider, IpcUnavailable, as_provider
from device_agent.uplink.transport import MessageHandler, MessageTooLarge, TransportError

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE
#: nucleus lite's GGL_IPC_MAX_MSG_LEN (the classic nucleus accepts far more; IoT Core then allows 128 KiB)
IPC_MAX_MESSAGE_BYTES = 10_000
#: a PublishToIoTCore frame without its topic and base64 payload, as awsiotsdk writes it: prelude (12), headers
#: (:message-type, :message-flags, :stream-id, operation, service-model-type, :content-type: 192), the JSON
#: ``{"topicName": "", "qos": "1", "payload": ""}`` (44) and the CRC (4); measured against the emulator
PUBLISH_FRAME_OVERHEAD = 252


def publish_payload_budget(topic: str, max_message_bytes: int = IPC_MAX_MESSAGE_BYTES) -> int:
    """The largest payload whose PublishToIoTCore frame on ``topic`` is at most ``max_message_bytes``."""
    topic_json = len(json.dumps(topic)) - 2  # as the client escapes it
    room = max_message_bytes - PUBLISH_FRAME_OVERHEAD - topic_json
    return max(0, 3 * (room // 4))  # base64: 4 characters per 3 bytes, the last group padded


def describe_refusal(kind: str, message: str) -> tuple[int, str]:
    """The log level and text for a publish the nucleus refused with error ``kind`` and ``message``: only an
    UnauthorizedError points at the accessControl; a full spooler (the classic nucleus answers ServiceError
    "... Spooler queue is full and new message would not be added into spooler") says so; anything else
    says what the nucleus answered."""
    if kind == "UnauthorizedError":
        return logging.ERROR, (
            "the nucleus refused a publish as not authorized; check the component's accessControl "
            "(aws.greengrass.ipc.mqttproxy, aws.greengrass#PublishToIoTCore) and the topic settings"
        )
    low = message.lower()
    if "spool" in low and "full" in low:
        return logging.WARNING, (
            "the nucleus' MQTT spooler is full (the core is offline or its spooler is smaller than the backlog); "
            "the message stays in the agent's spool and is sent again"
        )
    return logging.ERROR, f"the nucleus refused a publish with {kind}: {message[:300]}"


def _is_modeled_refusal(exc: BaseException) -> bool:
    """An error the nucleus answered with (as opposed to a broken connection)."""
    try:
        from awsiot.greengrasscoreipc.model import GreengrassCoreIPCError
    except ImportError:  # pragma: no cover - awsiotsdk is a dependency of this module
        return False
    return isinstance(exc, GreengrassCoreIPCError)


class IpcTransport:
    """Transport over IPC. ``connection`` may be shared with the configuration reader
    (``ComponentConfig(client=transport.connection)``); by default the transport makes its own
    from the environment the nucleus sets, and closes it on :meth:`stop`."""

    def __init__(
        self,
        connection: ClientProvider | GreengrassCoreIPCClientV2 | None = None,
        *,
        refused_retry_delay_s: float = 5.0,
        max_message_bytes: int = IPC_MAX_MESSAGE_BYTES,
    ) -> None:
        provider, owned = as_provider(connection)
        self.max_message_bytes = max_message_bytes
        self.connection: ClientProvider = provider
        self._owned = owned
        self.refused_retry_delay_s = refused_retry_delay_s
        self._lock = threading.Lock()
        self._subs: dict[str, MessageHandler] = {}
        self._waiters: dict[str, list[Future[None]]] = {}
        self._made_on: dict[str, object] = {}  # topic -> the client it was subscribed on
        self._ok_on: dict[str, object] = {}  # topic -> the client that accepted it
        self._operations: list[Any] = []
        self._refusals_logged: set[tuple[str, str]] = set()
        self._timers: set[threading.Timer] = set()
        self._stopped = threading.Event()
        self.connection.add_connect_callback(self._on_connect)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.connection.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            operations, self._operations = self._operations, []
            timers, self._timers = set(self._timers), set()
        for op in operations:
            try:
                op.close()
            except Exception as exc:
                log.debug("closing an IPC subscription failed: %s", exc)
        for timer in timers:
            timer.cancel()
        if self._owned:
            self.connection.stop()

    @property
    def connected(self) -> bool:
        return self.connection.connected and not self._stopped.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self.connection.wait_connected(timeout) and not self._stopped.is_set()

    @property
    def connects(self) -> int:
        """Successful connections to the nucleus so far (as MqttTransport counts broker connections)."""
        return int(getattr(self.connection, "connects", 1))

    @property
    def interruptions(self) -> int:
        """Connections lost so far."""
        return int(getattr(self.connection, "disconnects", 0))

    # -- publish ----------------------------------------------------------------------------------
    def max_payload_bytes(self, topic: str) -> int:
        return publish_payload_budget(topic, self.max_message_bytes)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        out: Future[None] = Future()
        budget = self.max_payload_bytes(topic)
        if len(payload) > budget:  # never sent: the nucleus would close the connection
            out.set_exception(MessageTooLarge(topic, len(payload), budget))
            return out
        try:
            client = self.connection.client()
            inner = client.publish_to_iot_core_async(topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=payload)
        except IpcUnavailable as exc:
            out.set_exception(TransportError(f"publish to {topic} failed: {exc}"))
            return out
        except Exception as exc:  # the connection closed under us (ConnectionClosedError …)
            out.set_exception(TransportError(f"publish to {topic} failed: {type(exc).__name__}: {exc}"))
            return out

        def _done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                out.set_result(None)
            elif _is_modeled_refusal(exc):
                self._refused(topic, exc, out)
            else:
                out.set_exception(TransportError(f"publish to {topic} not acknowledged: {type(exc).__name__}: {exc}"))

        inner.add_done_callback(_done)
        return out

    def _refused(self, topic: str, exc: BaseException, out: Future[None]) -> None:
        kind = type(exc).__name__
        message = str(getattr(exc, "message", "") or exc)
        key = (topic, kind)
        with self._lock:
            first = key not in self._refusals_logged
            self._refusals_logged.add(key)
        if first:
            level, text = describe_refusal(kind, message)
            log.log(level, text, extra={"topic": topic, "error": kind, "detail": message[:300]})
        error = TransportError(f"publish to {topic} refused: {kind}: {message}")
        if self.refused_retry_delay_s <= 0 or self._stopped.is_set():
            out.set_exception(error)
            return

        def _fail() -> None:
            with self._lock:
                self._timers.discard(timer)
            if not out.done():
                out.set_exception(error)

        timer = threading.Timer(self.refused_retry_delay_s, _fail)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    # -- subscribe ----------------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: MessageHandler) -> Future[None]:
        """Subscribe now if connected, else on connection; the future resolves when the nucleus accepts.
        Subscribing again to the same filter only replaces its handler."""
        out: Future[None] = Future()
        with self._lock:
            self._subs[topic] = handler
            self._waiters.setdefault(topic, []).append(out)
        try:
            client = self.connection.client()
        except IpcUnavailable:
            return out  # the on-connect callback subscribes
        self._sync(client)
        return out

    def _sync(self, client: GreengrassCoreIPCClientV2) -> None:
        """Make every wanted subscription on ``client`` exactly once; settle the waiters."""
        with self._lock:
            todo = [t for t in self._subs if self._made_on.get(t) is not client]
            for t in todo:
                self._made_on[t] = client
            ready = [t for t in self._waiters if t not in todo and self._ok_on.get(t) is client]
            waiters = {t: self._waiters.pop(t, []) for t in [*todo, *ready]}
        for t in ready:
            for w in waiters[t]:
                if not w.done():
                    w.set_result(None)
        for t in todo:
            self._subscribe_one(client, t, waiters[t])

    def _subscribe_one(self, client: GreengrassCoreIPCClientV2, topic: str, waiters: list[Future[None]]) -> None:
        def _on_event(event: Any) -> None:
            message = event.message
            if message is None:
                return
            with self._lock:
                handler = self._subs.get(topic)
            if handler is None:
                return
            try:
                handler(message.topic_name, bytes(message.payload or b""))
            except Exception:
                log.exception("IPC message handler failed", extra={"topic": message.topic_name})

        def _on_error(error: Exception) -> bool:
            log.warning("IPC subscription error", extra={"topic": topic, "error": str(error)[:300]})
            return False  # keep the stream open

        def _settle(exc: BaseException | None) -> None:
            for w in waiters:
                if w.done():
                    continue
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(TransportError(f"subscribe {topic} failed: {type(exc).__name__}: {exc}"))

        try:
            response, operation = client.subscribe_to_iot_core_async(
                topic_name=topic, qos=QOS_AT_LEAST_ONCE, on_stream_event=_on_event, on_stream_error=_on_error
            )
        except Exception as exc:
            _settle(exc)
            return
        with self._lock:
            self._operations.append(operation)

        def _done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                with self._lock:
                    self._ok_on[topic] = client
            else:
                detail = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("IPC subscribe failed", extra={"topic": topic, "error": detail})
            _settle(exc)

        response.add_done_callback(_done)

    def _on_connect(self, client: GreengrassCoreIPCClientV2) -> None:
        with self._lock:
            self._operations = []  # the previous connection's streams went with it
        self._sync(client)
