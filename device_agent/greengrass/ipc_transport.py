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
* In flight (:class:`InflightBudget`): nucleus lite's iotcored keeps every QoS 1 publish it wrote to IoT Core in
  a store of 15,000 bytes and at most 10 records until IoT Core's PUBACK (``modules/iotcored/src/mqtt.c``:
  ``IOTCORED_UNACKED_PACKET_BUFFER_SIZE`` = 3 × 5,000, ``IOTCORED_MQTT_MAX_PUBLISH_RECORDS``); a publish that
  does not fit is refused (``MQTTPublishStoreFailed`` → ServiceError "Failed to publish the message."). Lite
  answers PublishToIoTCore as soon as the packet is written, before the PUBACK, so the transport counts a
  publish as occupying that store from the request until ``store_hold_s`` after the answer (an allowance for
  IoT Core's round trip), and sends a new one only while at most ``max_inflight_messages`` (8) packets and
  ``max_inflight_bytes`` (14,000) MQTT PUBLISH bytes (:func:`mqtt_publish_packet_bytes`) are counted; the
  others wait in order. 8 records and 14,000 B leave two records and 1,000 B of the store to the nucleus'
  own publishers (fleet status) and the shadow; the same bounds apply on the classic nucleus, so the
  component runs unchanged on either. A ServiceError (lite's full store, classic's full spooler) pauses
  every publish with exponential backoff (``service_retry_min_s`` doubling to ``service_retry_max_s``, with
  jitter) and, when publishes were accepted since the last pause (so our own may fill the store), doubles
  ``store_hold_s`` (at most ``MAX_STORE_HOLD_S``; it decays 1 % per accepted publish; refusals in a row, as
  while the core is offline, do not grow it); the refused
  publish and those waiting fail when the pause ends, so the publisher sends them again from its spool, in
  order. Nothing is lost: a spooled message is deleted only after the nucleus accepted it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from device_agent.greengrass.connection import ClientProvider, IpcUnavailable, as_provider
from device_agent.greengrass.ipc_limits import (
    DEFAULT_INFLIGHT_BYTES,
    DEFAULT_INFLIGHT_MESSAGES,
    DEFAULT_STORE_HOLD_S,
    IPC_MAX_MESSAGE_BYTES,
    MAX_STORE_HOLD_S,
    InflightBudget,
    describe_refusal,
    is_modeled_refusal,
    mqtt_publish_packet_bytes,
    publish_payload_budget,
)
from device_agent.uplink.transport import MessageHandler, MessageTooLarge, TransportError
from hardware.transports.backoff import Backoff

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE


@dataclass
class _Pending:
    """A publish waiting for room in the in-flight budget."""

    topic: str
    payload: bytes
    size: int  # its MQTT PUBLISH packet, bytes
    out: Future[None] = field(default_factory=Future)


class IpcTransport:
    """Transport over IPC. ``connection`` may be shared with the configuration reader
    (``ComponentConfig(client=transport.connection)``); by default the transport makes its own
    from the environment the nucleus sets, and closes it on :meth:`stop`. ``max_inflight_messages``,
    ``max_inflight_bytes`` and ``store_hold_s`` bound what is in flight (module docstring)."""

    def __init__(
        self,
        connection: ClientProvider | GreengrassCoreIPCClientV2 | None = None,
        *,
        refused_retry_delay_s: float = 5.0,
        max_message_bytes: int = IPC_MAX_MESSAGE_BYTES,
        max_inflight_messages: int = DEFAULT_INFLIGHT_MESSAGES,
        max_inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
        store_hold_s: float = DEFAULT_STORE_HOLD_S,
        service_retry_min_s: float = 1.0,
        service_retry_max_s: float = 30.0,
        close_connection: bool | None = None,
    ) -> None:
        provider, owned = as_provider(connection)
        if close_connection is not None:  # default: closed by stop() only when the transport made it
            owned = close_connection
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
        self.budget = InflightBudget(max_inflight_messages, max_inflight_bytes)
        self.base_store_hold_s = store_hold_s
        self.store_hold_s = store_hold_s
        self._queue: deque[_Pending] = deque()
        self._paused_until = 0.0
        self._service_backoff = Backoff(service_retry_min_s, service_retry_max_s, jitter=0.5)
        self.service_refusals = 0  # publishes the nucleus refused with ServiceError
        self._accepted_since_pause = False
        self.connection.add_connect_callback(self._on_connect)

    @property
    def max_inflight_messages(self) -> int:
        """The most publishes in flight at once (the publisher keeps its window within it)."""
        return self.budget.max_messages

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.connection.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            operations, self._operations = self._operations, []
            timers, self._timers = set(self._timers), set()
            waiting, self._queue = list(self._queue), deque()
        for op in operations:
            try:
                op.close()
            except Exception as exc:
                log.debug("closing an IPC subscription failed: %s", exc)
        for timer in timers:
            timer.cancel()
        _fail(waiting, TransportError("the IPC transport stopped before sending"))
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

    @property
    def fatal(self) -> str | None:
        """Why the connection gave up for good (the nucleus keeps refusing this component's token), else None."""
        reason = getattr(self.connection, "fatal", None)
        return reason if isinstance(reason, str) else None

    def add_fatal_callback(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the connection gives up for good (see :attr:`fatal`)."""
        add = getattr(self.connection, "add_fatal_callback", None)
        if callable(add):
            add(callback)

    # -- publish ----------------------------------------------------------------------------------
    def max_payload_bytes(self, topic: str) -> int:
        return publish_payload_budget(topic, self.max_message_bytes)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        budget = self.max_payload_bytes(topic)
        item = _Pending(topic, payload, mqtt_publish_packet_bytes(topic, len(payload)))
        if len(payload) > budget:  # never sent: the nucleus would close the connection
            item.out.set_exception(MessageTooLarge(topic, len(payload), budget))
            return item.out
        if self._stopped.is_set():
            item.out.set_exception(TransportError(f"publish to {topic} failed: the IPC transport is stopped"))
            return item.out
        with self._lock:
            self._queue.append(item)
        self._pump()
        return item.out

    def _pump(self) -> None:
        """Send what waits, oldest first, while the budget has room and no ServiceError pause is on."""
        while True:
            with self._lock:
                if not self._queue or time.monotonic() < self._paused_until or self._stopped.is_set():
                    return
                item = self._queue[0]
                if not self.budget.admit(item.size):
                    return
                self._queue.popleft()
            self._dispatch(item)

    def _dispatch(self, item: _Pending) -> None:
        topic = item.topic
        try:
            client = self.connection.client()
            inner = client.publish_to_iot_core_async(topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=item.payload)
        except Exception as exc:  # not connected, or the connection closed under us (ConnectionClosedError …)
            detail = str(exc) if isinstance(exc, IpcUnavailable) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.budget.release(item.size)
                waiting, self._queue = list(self._queue), deque()  # the connection is gone: all fail alike
            _fail([item, *waiting], TransportError(f"publish to {topic} failed: {detail}"))
            return

        def _done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                self._accepted(item)
            elif is_modeled_refusal(exc):
                self._release(item.size, pump=False)  # refused: not in the nucleus' store
                if type(exc).__name__ == "ServiceError":
                    self._service_refused(item, exc)
                else:
                    self._refused(topic, exc, item.out)
            else:
                self._release(item.size)
                item.out.set_exception(
                    TransportError(f"publish to {topic} not acknowledged: {type(exc).__name__}: {exc}")
                )

        inner.add_done_callback(_done)

    def _accepted(self, item: _Pending) -> None:
        with self._lock:
            self._service_backoff.succeeded()
            self._accepted_since_pause = True
            hold = self.store_hold_s
            if self.store_hold_s > self.base_store_hold_s:  # back towards the configured allowance
                self.store_hold_s = max(self.base_store_hold_s, self.store_hold_s * 0.99)
        item.out.set_result(None)
        if hold > 0:
            self._later(hold, lambda: self._release(item.size))
        else:
            self._release(item.size)

    def _release(self, size: int, *, pump: bool = True) -> None:
        with self._lock:
            self.budget.release(size)
        if pump:
            self._pump()

    def _service_refused(self, item: _Pending, exc: BaseException) -> None:
        """A ServiceError (lite: iotcored's store is full; classic: its spooler is): pause every publish with
        backoff; the refused publish and those waiting fail when the pause ends (the publisher resends them)."""
        kind = type(exc).__name__
        message = str(getattr(exc, "message", "") or exc)
        now = time.monotonic()
        with self._lock:
            self.service_refusals += 1
            new_pause = now >= self._paused_until
            if new_pause:  # one step of the schedule per pause, however many publishes it refused
                self._paused_until = now + self._service_backoff.failed()
                if self._accepted_since_pause:  # our own publishes may fill the store: allow them longer
                    self.store_hold_s = min(MAX_STORE_HOLD_S, max(self.store_hold_s * 2, 0.1))
                self._accepted_since_pause = False  # refusals in a row (core offline) do not grow it
            delay = self._paused_until - now
            hold = self.store_hold_s
            key = (item.topic, kind)
            first = key not in self._refusals_logged
            self._refusals_logged.add(key)
        if first:
            level, text = describe_refusal(kind, message)
            log.log(level, text, extra={"topic": item.topic, "error": kind, "detail": message[:300]})
        if new_pause:
            log.warning(
                "the nucleus refused a publish (ServiceError); pausing publishes, the message stays in the spool",
                extra={"topic": item.topic, "retry_s": round(delay, 3), "store_hold_s": round(hold, 3)},
            )
        error = TransportError(f"publish to {item.topic} refused: {kind}: {message}")

        def _resume() -> None:
            with self._lock:
                waiting, self._queue = list(self._queue), deque()
            _fail([item, *waiting], error)
            self._pump()

        self._later(delay, _resume)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay`` seconds on a timer thread (cancelled by :meth:`stop`)."""

        def _run() -> None:
            with self._lock:
                self._timers.discard(timer)
            fn()

        timer = threading.Timer(delay, _run)
        timer.daemon = True
        with self._lock:
            if self._stopped.is_set():
                return
            self._timers.add(timer)
        timer.start()

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

        def _fail_now() -> None:
            if not out.done():
                out.set_exception(error)

        self._later(self.refused_retry_delay_s, _fail_now)

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


def _fail(items: list[_Pending], error: TransportError) -> None:
    for item in items:
        if not item.out.done():
            item.out.set_exception(error)
