"""Exponential reconnect backoff: after a failure the next attempt waits base, 2*base, ... up to max."""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    def __init__(self, min_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if min_s < 0 or max_s < min_s:
            raise ValueError(f"invalid backoff range {min_s}..{max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._clock = clock
        self.failures = 0
        self._not_before = 0.0

    def failed(self) -> float:
        """Record a failure; return the delay until the next attempt may start."""
        self.failures += 1
        delay = min(self.max_s, self.min_s * (2 ** min(self.failures - 1, 30)))
        self._not_before = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._not_before = 0.0

    def remaining(self) -> float:
        """Seconds until an attempt is allowed (0 when allowed now)."""
        return max(0.0, self._not_before - self._clock())
