"""Exponential reconnect backoff, shared by the serial drivers and the agent's uplinks (MQTT, Greengrass IPC).

After the n-th consecutive failure the next attempt waits ``d = min(max_s, min_s * 2**(n-1))``, shortened by a
random part of at most ``jitter * d``: ``jitter = 0`` is the plain doubling schedule (the serial drivers),
``0.5`` is "equal jitter" (the wait is uniform in ``[d/2, d]``; the uplinks), ``1`` is "full jitter". Jitter
spreads the reconnects of many devices after a shared outage; keeping half the delay fixed keeps the number of
attempts in any window bounded by the schedule (see :meth:`Backoff.max_attempts`).

A connection that comes up and breaks again at once must not reset the schedule, or a peer that closes every
connection (a poison message, an authorisation refusal) makes a reconnect storm. So :meth:`connected` only
notes the time, and the schedule restarts only once the connection has stayed up ``healthy_after_s``
(checked at the next failure), or when :meth:`succeeded` says so explicitly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        min_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        jitter: float = 0.0,
        healthy_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if min_s < 0 or max_s < min_s:
            raise ValueError(f"invalid backoff range {min_s}..{max_s}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within 0..1, got {jitter}")
        self.min_s = min_s
        self.max_s = max_s
        self.jitter = jitter
        self.healthy_after_s = healthy_after_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.failures = 0
        self._not_before = 0.0
        self._connected_at: float | None = None

    def ceiling(self, failures: int) -> float:
        """The delay before jitter after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.min_s * (2 ** min(failures - 1, 30)))

    def failed(self) -> float:
        """Record a failure (a refused attempt or a lost connection); return the delay until the next attempt."""
        if self._connected_at is not None:
            up_for = self._clock() - self._connected_at
            self._connected_at = None
            if self.healthy_after_s is not None and up_for >= self.healthy_after_s:
                self.failures = 0
        self.failures += 1
        ceiling = self.ceiling(self.failures)
        delay = ceiling - self.jitter * ceiling * self._rng.random() if self.jitter else ceiling
        self._not_before = self._clock() + delay
        return delay

    def connected(self) -> None:
        """A connection came up: the schedule restarts if it stays up ``healthy_after_s``."""
        self._connected_at = self._clock()
        self._not_before = 0.0

    def succeeded(self) -> None:
        """Restart the schedule now (a success that proves the peer works)."""
        self.failures = 0
        self._not_before = 0.0
        self._connected_at = None

    def remaining(self) -> float:
        """Seconds until an attempt is allowed (0 when allowed now)."""
        return max(0.0, self._not_before - self._clock())

    def max_attempts(self, window_s: float) -> int:
        """The most attempts this schedule allows within ``window_s`` seconds, starting with an immediate one
        and with every delay at its shortest (``(1 - jitter) * ceiling``) — a bound for tests and docs."""
        attempts, elapsed, n = 1, 0.0, 0
        while True:
            n += 1
            shortest = (1.0 - self.jitter) * self.ceiling(n)
            if shortest <= 0:
                raise ValueError("without a minimum delay the number of attempts is unbounded")
            elapsed += shortest
            if elapsed > window_s:
                return attempts
            attempts += 1
