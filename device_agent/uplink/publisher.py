"""Drains the spool to the transport: oldest first, a bounded window in flight, delete on ack.

A message is deleted from the spool only after its acknowledgement. If the connection drops, unacked
messages stay in the spool and are sent again after reconnecting, in their original order (the broker
may then see a message twice; the message id lets the cloud drop the duplicate).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future

from device_agent.uplink.spool import Spool, SpooledMessage
from device_agent.uplink.transport import Transport

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, spool: Spool, transport: Transport, inflight: int = 50, ack_timeout_s: float = 30.0) -> None:
        self.spool = spool
        self.transport = transport
        self.inflight_max = inflight
        # the window is refilled in batches of this many, not one message per acknowledgement
        self._refill_at = max(1, inflight // 4)
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
        self.first_ack_monotonic: float | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New messages are in the spool."""
        self._wake.set()

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop; with a drain timeout, first wait (bounded) for the spool to empty."""
        deadline = time.monotonic() + drain_timeout_s
        while drain_timeout_s > 0 and time.monotonic() < deadline and self.spool.pending > 0:
            if not self.transport.connected:
                # still (re)connecting: wait within the budget; what is not sent stays in the spool
                self.transport.wait_connected(max(0.0, min(0.2, deadline - time.monotonic())))
                continue
            self._wake.set()
            time.sleep(0.02)
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
        fut = self.transport.publish(msg.topic, msg.payload)
        fut.add_done_callback(functools.partial(self._on_done, msg.seq))

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
