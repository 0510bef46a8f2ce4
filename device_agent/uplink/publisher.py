"""Drains the spool to the transport: oldest first, a bounded window in flight, delete on ack.

The window is ``inflight`` messages, never more than the transport itself keeps in flight
(``transport.inflight_limit``: Greengrass IPC bounds it for nucleus lite's store of unacknowledged publishes),
so a message does not wait inside the transport while its acknowledgement timeout runs.

A message is deleted from the spool only after its acknowledgement. If the connection drops, unacked
messages stay in the spool and are sent again after reconnecting, in their original order (the broker
may then see a message twice; the message id lets the cloud drop the duplicate).

A message larger than the transport carries on its topic (``Transport.max_payload_bytes``) is never sent as
is — sending it would only break the connection, again after every reconnect. A telemetry batch is split
into parts that fit (``sizing.split_telemetry``: same samples, same order, ids derived from the original's),
sent in its place; the spooled row is deleted once every part is acknowledged. Any other oversized message
is deleted from the spool and reported through ``on_too_large(topic, size, limit)`` (the agent raises the
``message_too_large`` alarm). Either way what follows is not held up.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from device_agent.uplink.sizing import NotSplittable, split_telemetry
from device_agent.uplink.spool import LOW_PRIORITY_SUFFIX, Spool, SpooledMessage
from device_agent.uplink.transport import Transport, inflight_limit, payload_budget

TooLargeHandler = Callable[[str, int, int], None]

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        spool: Spool,
        transport: Transport,
        inflight: int = 50,
        ack_timeout_s: float = 30.0,
        on_too_large: TooLargeHandler | None = None,
    ) -> None:
        self.spool = spool
        self.on_too_large = on_too_large
        self.transport = transport
        # never more than the transport itself keeps in flight (Greengrass IPC: lite's unacknowledged store)
        self.inflight_max = min(inflight, inflight_limit(transport) or inflight)
        # the window is refilled in batches of this many, not one message per acknowledgement
        self._refill_at = max(1, self.inflight_max // 4)
        self.ack_timeout_s = ack_timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, float] = {}  # seq -> time sent
        self._acked: list[int] = []
        self._failed = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.acked = 0
        self.failures = 0
        self.split = 0  # oversized telemetry messages sent as parts
        self.dropped_too_large = 0  # oversized messages deleted unsent
        self.first_ack_monotonic: float | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New messages are in the spool."""
        self._wake.set()

    def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) for the spool to empty, riding out a reconnect; True if it did."""
        deadline = time.monotonic() + timeout_s
        while timeout_s > 0 and time.monotonic() < deadline and self.spool.pending > 0:
            if not self.transport.connected:
                # still (re)connecting: wait within the budget; what is not sent stays in the spool
                self.transport.wait_connected(max(0.0, min(0.2, deadline - time.monotonic())))
                continue
            self._wake.set()
            time.sleep(0.02)
        return self.spool.pending == 0

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop; with a drain timeout, first wait (bounded) for the spool to empty."""
        self.drain(drain_timeout_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._commit_acks(wait=True)

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._wake.set()
            if self.spool.pending == 0:
                return True
            time.sleep(0.01)
        return self.spool.pending == 0

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        last_seq = 0
        last_timeout_check = 0.0
        while not self._stop.is_set():
            self._wake.clear()  # cleared before looking, so a notify during this pass is not lost
            self._commit_acks()
            now = time.monotonic()
            with self._lock:
                failed, self._failed = self._failed, False
                timed_out: list[int] = []
                if now - last_timeout_check >= 1.0:
                    last_timeout_check = now
                    timed_out = [s for s, t in self._inflight.items() if now - t > self.ack_timeout_s]
                    for s in timed_out:
                        del self._inflight[s]
                if failed or timed_out:
                    last_seq = 0  # resend everything not acknowledged, from the oldest
                inflight = len(self._inflight)
            if not self.transport.connected:
                with self._lock:
                    # unacked messages will be resent in order after the reconnect
                    self._inflight.clear()
                    last_seq = 0
                self.transport.wait_connected(0.2)
                continue
            room = self.inflight_max - inflight
            if inflight and room < self._refill_at:
                self._wake.wait(0.05)
                continue
            batch = self.spool.peek(room, after_seq=last_seq)
            with self._lock:
                batch = [m for m in batch if m.seq not in self._inflight]
                sent_at = time.monotonic()
                for msg in batch:
                    self._inflight[msg.seq] = sent_at
            if not batch:
                self._wake.wait(0.2)
                continue
            for msg in batch:
                self._send(msg)
                last_seq = msg.seq

    def _send(self, msg: SpooledMessage) -> None:
        self.sent += 1
        budget = payload_budget(self.transport, msg.topic)
        if budget is not None and len(msg.payload) > budget:
            fut = self._send_oversized(msg, budget)
        else:
            fut = self.transport.publish(msg.topic, msg.payload)
        fut.add_done_callback(functools.partial(self._on_done, msg.seq))

    def _send_oversized(self, msg: SpooledMessage, budget: int) -> Future[None]:
        """Split an oversized telemetry message into parts and send them (the future resolves when all are
        acknowledged, fails if any fails); delete any other oversized message unsent."""
        done: Future[None] = Future()
        parts: list[tuple[str, bytes]] = []
        if msg.topic.endswith(LOW_PRIORITY_SUFFIX):
            try:
                parts = split_telemetry(msg.payload, budget)
            except NotSplittable as exc:
                log.warning("an oversized telemetry message cannot be split", extra={"id": msg.id, "error": str(exc)})
        if not parts:
            self.dropped_too_large += 1
            log.error(
                "message larger than the transport carries; deleted from the spool unsent",
                extra={"id": msg.id, "topic": msg.topic, "size": len(msg.payload), "limit": budget},
            )
            if self.on_too_large is not None:
                try:
                    self.on_too_large(msg.topic, len(msg.payload), budget)
                except Exception:
                    log.exception("the too-large handler failed")
            done.set_result(None)  # acknowledged as handled: the row is deleted, what follows goes on
            return done
        self.split += 1
        log.warning(
            "telemetry message larger than the transport carries; sent in parts",
            extra={"id": msg.id, "topic": msg.topic, "size": len(msg.payload), "limit": budget, "parts": len(parts)},
        )
        futures = [self.transport.publish(msg.topic, payload) for _, payload in parts]
        remaining = [len(futures)]
        lock = threading.Lock()

        def _part_done(f: Future[None]) -> None:
            exc = f.exception()
            with lock:
                if done.done():
                    return
                if exc is not None:
                    done.set_exception(exc)
                    return
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set_result(None)

        for f in futures:
            f.add_done_callback(_part_done)
        return done

    def _on_done(self, seq: int, fut: Future[None]) -> None:
        exc = fut.exception()
        with self._lock:
            if exc is None:
                self._acked.append(seq)
                if self.first_ack_monotonic is None:
                    self.first_ack_monotonic = time.monotonic()
                # wake the loop when a refill's worth is acknowledged or nothing else is in flight (waking it
                # on every acknowledgement costs more than the publish itself at high rates)
                wake = len(self._acked) >= self._refill_at or len(self._acked) >= len(self._inflight)
            else:
                self.failures += 1
                self._failed = True
                self._inflight.pop(seq, None)
                wake = True
        if exc is not None:
            log.debug("publish failed; will resend", extra={"seq": seq, "error": str(exc)[:200]})
        if wake:
            self._wake.set()

    def _commit_acks(self, wait: bool = False) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        # called even with nothing new: the spool may still hold acknowledgements it could not delete at once
        self.spool.ack(acked, wait=wait)
        if acked:
            self.acked += len(acked)
            with self._lock:
                for s in acked:
                    self._inflight.pop(s, None)
