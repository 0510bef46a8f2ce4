"""The small interface between the spool's publisher and the network, with an in-memory implementation.

A transport publishes bytes to a topic and resolves the returned future once the broker acknowledged
the message (MQTT QoS 1 PUBACK, or the Greengrass nucleus' response). It reconnects by itself; the
publisher watches ``connected`` and only sends while connected. A transport declares the largest payload it
can carry on a topic (:meth:`Transport.max_payload_bytes`, derived from its limit on the framed message); the
agent sizes telemetry batches to it and the publisher never sends a bigger one. Like httpx's MockTransport,
:class:`MemoryTransport` is a complete transport without a network, for tests and offline tools.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]


class TransportError(RuntimeError):
    """A publish or subscribe failed (not connected, refused, timed out)."""


class MessageTooLarge(TransportError):
    """The message does not fit the transport's limit; it was not sent (sending it would break the link)."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"message on {topic} is {size} bytes; the transport carries at most {limit} here")
        self.topic = topic
        self.size = size
        self.limit = limit


def payload_budget(transport: object, topic: str) -> int | None:
    """The largest payload ``transport`` carries on ``topic`` (None: no limit it knows of)."""
    limit = getattr(transport, "max_payload_bytes", None)
    return limit(topic) if callable(limit) else None


def inflight_limit(transport: object) -> int | None:
    """The most publishes ``transport`` keeps in flight at once (None: no limit it knows of); a publisher's
    window larger than this would only queue inside the transport, where its acknowledgement timeout runs."""
    limit = getattr(transport, "max_inflight_messages", None)
    return limit if isinstance(limit, int) and limit > 0 else None


class Transport(Protocol):
    def start(self) -> None:
        """Begin connecting in the background (returns at once)."""

    def stop(self) -> None:
        """Disconnect and release resources."""

    @property
    def connected(self) -> bool: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Send; the future resolves on acknowledgement or fails with TransportError."""

    def subscribe(self, topic: str, handler: MessageHandler) -> Future[None]:
        """Receive messages on ``topic`` (filters with + and # allowed); kept across reconnects."""

    def max_payload_bytes(self, topic: str) -> int | None:
        """The largest payload a publish on ``topic`` may carry (None: no limit); a bigger one fails with
        :class:`MessageTooLarge` without being sent."""


class MemoryTransport:
    """Records what is published. ``online = False`` makes it behave like a lost connection."""

    def __init__(self, online: bool = True, fail_every: int = 0, max_payload: int | None = None) -> None:
        self.max_payload = max_payload
        self.published: list[tuple[str, bytes]] = []
        self._online = threading.Event()
        if online:
            self._online.set()
        self._handlers: list[tuple[str, MessageHandler]] = []
        self._lock = threading.Lock()
        self.fail_every = fail_every
        self._n = 0
        self.on_publish: Callable[[str, bytes], None] | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._online.clear()

    @property
    def connected(self) -> bool:
        return self._online.is_set()

    def set_online(self, online: bool) -> None:
        if online:
            self._online.set()
        else:
            self._online.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._online.wait(timeout)

    def max_payload_bytes(self, topic: str) -> int | None:
        return self.max_payload

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        fut: Future[None] = Future()
        if self.max_payload is not None and len(payload) > self.max_payload:
            fut.set_exception(MessageTooLarge(topic, len(payload), self.max_payload))
            return fut
        with self._lock:
            self._n += 1
            fail = (self.fail_every and self._n % self.fail_every == 0) or not self._online.is_set()
            if not fail:
                self.published.append((topic, payload))
        if fail:
            fut.set_exception(TransportError("not acknowledged"))
            return fut
        if self.on_publish is not None:
            self.on_publish(topic, payload)
        for pattern, handler in list(self._handlers):
            if topic_matches(pattern, topic):
                handler(topic, payload)
        fut.set_result(None)
        return fut

    def subscribe(self, topic: str, handler: MessageHandler) -> Future[None]:
        self._handlers.append((topic, handler))
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (+ one level, # the rest)."""
    p_parts = pattern.split("/")
    t_parts = topic.split("/")
    for k, p in enumerate(p_parts):
        if p == "#":
            return True
        if k >= len(t_parts):
            return False
        if p not in ("+", t_parts[k]):
            return False
    return len(p_parts) == len(t_parts)
