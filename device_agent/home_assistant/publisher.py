"""The state publisher: the agent's messages go in through a bounded queue (never blocking the polling loop);
one worker thread turns them into publications and sends them to the local broker.

While the broker is down the worker keeps draining the queue into the latest publication per topic (memory:
one entry per topic), so what is sent on reconnect is the current state, not a backlog. A state replaced before
it could be sent is counted (``superseded``), as is an item refused by a full queue (``dropped``); both are
logged at most once a minute. On every (re)connection, and when Home Assistant announces itself (its birth
message), the status, every discovery config and the last state of every topic are sent again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: publishes awaiting their acknowledgement at once
MAX_INFLIGHT = 64
#: at most one log line about dropped or superseded states this often (wall seconds)
DROP_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool


class Broker(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    def publish(self, topic: str, payload: bytes, retain: bool) -> Future[Any]: ...


class StatePublisher:
    def __init__(
        self,
        translate: Callable[[Any], Iterable[Publication]],
        queue_size: int,
        status: Callable[[bool], Publication],
    ) -> None:
        """``translate`` turns one queued item into publications (on the worker thread); ``status(online)`` is
        the agent's status publication (sent first on every connection, "offline" on a clean stop)."""
        self._translate = translate
        self._status = status
        #: unbounded itself: ``submit`` refuses droppable items past ``queue_size``; the rest (alarms, health,
        #: seeds: a handful per cycle) always get in, in order, so a flood of telemetry never hides a state change
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queue_size = queue_size
        self._pending: dict[str, Publication] = {}
        self._last: dict[str, Publication] = {}
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._resync = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        #: items the full queue refused; states replaced before they were sent; publishes that failed
        self.dropped = 0
        self.superseded = 0
        self.failed = 0
        self.published = 0
        self._logged = (0, 0)
        self._last_log = 0.0

    # -- the agent's side (any thread; never blocks) -------------------------------------------------
    def submit(self, item: Any, droppable: bool = True) -> bool:
        """Queue ``item`` for the worker. A droppable item (a telemetry batch: the next one replaces it) is
        refused once ``queue_size`` items wait, and counted; any other item is always queued."""
        if self._stopping.is_set():
            return False
        if droppable and self._queue.qsize() >= self._queue_size:
            with self._counts_lock:
                self.dropped += 1
            return False
        self._queue.put_nowait(item)
        return True

    def wake(self) -> None:
        """Something changed on the broker's side (a (re)connection): the worker looks now."""
        self._queue.put_nowait(None)

    def request_resync(self) -> None:
        """Send discovery and the last states again (Home Assistant restarted)."""
        self._resync.set()
        self.wake()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, broker: Broker) -> None:
        self._broker = broker
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ha-publisher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is pending and the "offline" status (best effort within ``timeout_s``), then end."""
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s + 1.0)

    # -- the worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        broker = self._broker
        assert broker is not None
        synced = 0
        while True:
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
            items = [item]
            while len(items) < 10_000:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for it in items:
                if it is not None:
                    self._stage_all(it)
            if broker.connected:
                if broker.generation != synced or self._resync.is_set():
                    synced = broker.generation
                    self._resync.clear()
                    self._stage_resync()
                self._flush(broker)
            self._log_drops(broker)
            if self._stopping.is_set():
                break
        self._final(broker)

    def _stage_all(self, item: Any) -> None:
        try:
            publications = list(self._translate(item))
        except Exception:
            log.exception("home assistant: could not turn a message into states")
            return
        for pub in publications:
            self._stage(pub)

    def _stage(self, pub: Publication) -> None:
        if pub.topic in self._pending:
            self.superseded += 1
        self._pending[pub.topic] = pub
        self._last[pub.topic] = pub

    def _stage_resync(self) -> None:
        status = self._status(True)
        rest = {**self._last, **self._pending}
        rest.pop(status.topic, None)
        self._pending = {status.topic: status, **rest}

    def _flush(self, broker: Broker) -> None:
        while self._pending and broker.connected:
            with self._inflight_lock:
                if self._inflight >= MAX_INFLIGHT:
                    return
                self._inflight += 1
            topic = next(iter(self._pending))
            pub = self._pending.pop(topic)
            try:
                future = broker.publish(pub.topic, pub.payload, pub.retain)
            except Exception as exc:
                self._done_with(exc)
                continue
            future.add_done_callback(lambda f: self._done_with(f.exception()))

    def _done_with(self, exc: BaseException | None) -> None:
        with self._inflight_lock:
            self._inflight -= 1
            if exc is None:
                self.published += 1
            else:
                self.failed += 1  # lost with the connection: the resync on reconnect sends the last state again
        if exc is not None:
            log.debug("home assistant: publish failed: %s", exc)

    def _log_drops(self, broker: Broker) -> None:
        counts = (self.dropped, self.superseded)
        now = time.monotonic()
        if counts != self._logged and now - self._last_log >= DROP_LOG_EVERY_S:
            self._last_log = now
            self._logged = counts
            log.warning(
                "home assistant: states not delivered",
                extra={
                    "dropped_queue_full": counts[0],
                    "superseded_undelivered": counts[1],
                    "broker_connected": broker.connected,
                },
            )

    def _final(self, broker: Broker) -> None:
        if not broker.connected:
            return
        self._stage(self._status(False))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self._flush(broker)
            with self._inflight_lock:
                if not self._pending and self._inflight == 0:
                    return
            time.sleep(0.02)

    @property
    def pending(self) -> int:
        return len(self._pending)
