"""Source wrappers the local stack needs around real drivers.

* :class:`EmulatedBmsSource` — a real BMS driver (e.g. JBD over a pty) talking to an *emulated* BMS whose pack
  physics runs ``acceleration`` times faster than the wall clock. The data is simulated, so every sample is
  tagged ``simulated=True`` (the driver cannot know), and it is stamped on the emulated pack's clock
  (``t0 + (wall − t0) × acceleration``) so that coulomb counting, cycle times and ageing stay consistent.
* :class:`PacedReplaySource` — a replayed log (real data, left untagged) delivered at a steady number of
  samples per wall-clock second instead of as fast as the pipeline goes.
"""

from __future__ import annotations

import threading
import time

from hardware.source import Source
from schema.messages import Sample


class EmulatedBmsSource(Source):
    def __init__(self, inner: Source, acceleration: float, t0: float | None = None) -> None:
        if not acceleration > 0:
            raise ValueError("acceleration must be > 0")
        self.inner = inner
        self.source_id = inner.source_id
        self.simulated = True
        self.paced = inner.paced
        self.acceleration = acceleration
        self.t0 = time.time() if t0 is None else t0

    def open(self) -> None:
        self.inner.open()

    def poll(self) -> Sample:
        sample = self.inner.poll()
        ts = self.t0 + (sample.ts - self.t0) * self.acceleration
        return sample.model_copy(update={"ts": ts, "simulated": True})

    def close(self) -> None:
        self.inner.close()


class PacedReplaySource(Source):
    """At most ``rate_hz`` samples per wall second; never bursts to catch up after a stall of over 1 s."""

    paced = False  # the wrapper paces itself: the agent must not add its own sample-interval wait

    def __init__(self, inner: Source, rate_hz: float, stop: threading.Event | None = None) -> None:
        if not rate_hz > 0:
            raise ValueError("rate_hz must be > 0")
        self.inner = inner
        self.source_id = inner.source_id
        self.simulated = inner.simulated
        self.rate_hz = rate_hz
        self._stop = stop or threading.Event()
        self._next = 0.0

    def open(self) -> None:
        self.inner.open()
        self._next = time.monotonic()

    def poll(self) -> Sample:
        now = time.monotonic()
        if self._next - now > 0:
            self._stop.wait(self._next - now)
        elif now - self._next > 1.0:
            self._next = now
        self._next += 1.0 / self.rate_hz
        return self.inner.poll()

    def close(self) -> None:
        self.inner.close()
