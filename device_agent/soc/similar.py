"""The capacity measured on discharges like the one under way.

Capacity to the cut-off depends on the load and the temperature: a cell gives less before its loaded voltage
reaches the cut-off at 4 A than at 1 A, and less cold than warm. So each measured capacity is remembered with
the mean current and temperature of the discharge that measured it, and during a discharge the count runs on
the capacities measured on *similar* ones (mean current within :data:`CURRENT_FRACTION`, temperature at the
start within :data:`TEMPERATURE_C`, as the anomaly detectors judge "similar"): the median of the latest
:data:`MEDIAN_OF` of them, so a single interrupted or odd run does not set it. The discharge's mean current so
far and its starting temperature decide (never its future): it is judged after :data:`SETTLE_S` of
discharging. (The starting temperature, not the mean: a cell heats by 10-15 °C over a 4 A discharge, so the
mean so far says little early on.) With none similar, the capacities measured at the nearest load seen (of
whatever temperature): capacity to the cut-off falls with the load, so that is closer than the latest one
measured at a very different load.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

CURRENT_FRACTION = 0.25
TEMPERATURE_C = 8.0
MEDIAN_OF = 3
SETTLE_S = 60.0
REMEMBERED = 60


@dataclass(frozen=True)
class Measured:
    current_a: float
    temperature_c: float | None
    capacity_ah: float


class DischargeMemory:
    def __init__(self) -> None:
        self.entries: deque[Measured] = deque(maxlen=REMEMBERED)
        self._since: float | None = None
        self._ah = 0.0
        self._start_temp: float | None = None
        self._last_ts: float | None = None
        #: the discharge that last reached the cut-off: its mean current and temperature, awaiting its capacity
        self.pending: tuple[float, float | None] | None = None

    # -- the discharge under way --------------------------------------------------------------------------
    def start(self, ts: float, temperature_c: float | None) -> None:
        self._since, self._ah, self._start_temp, self._last_ts = ts, 0.0, temperature_c, ts

    def stop(self) -> None:
        self._since = None

    @property
    def active(self) -> bool:
        return self._since is not None

    def add(self, ts: float, current_a: float) -> None:
        if self._since is None or self._last_ts is None:
            return
        self._ah += max(0.0, -current_a) * max(0.0, ts - self._last_ts) / 3600.0
        self._last_ts = ts

    def _mean(self, ts: float) -> tuple[float, float | None] | None:
        if self._since is None or ts - self._since < SETTLE_S:
            return None
        return self._ah * 3600.0 / (ts - self._since), self._start_temp

    def reached_cutoff(self, ts: float) -> None:
        if self._since is not None and ts > self._since:
            self.pending = (self._ah * 3600.0 / (ts - self._since), self._start_temp)
        self._since = None

    # -- capacities --------------------------------------------------------------------------------------
    def measured(self, capacity_ah: float) -> None:
        """A new measured capacity: it belongs to the discharge that last reached the cut-off."""
        if self.pending is not None and self.pending[0] > 0.0:
            self.entries.append(Measured(self.pending[0], self.pending[1], capacity_ah))
        self.pending = None

    def capacity_now(self, ts: float) -> float | None:
        """The capacity measured on discharges like this one so far (None: not discharging, too early, none)."""
        mean = self._mean(ts)
        if mean is None:
            return None
        current, temp = mean
        similar = [
            e.capacity_ah
            for e in self.entries
            if abs(e.current_a - current) <= CURRENT_FRACTION * current
            and (temp is None or e.temperature_c is None or abs(e.temperature_c - temp) <= TEMPERATURE_C)
        ]
        if not similar and self.entries:  # a load not seen at this temperature: the nearest load seen
            nearest = min(self.entries, key=lambda e: abs(e.current_a - current)).current_a
            similar = [e.capacity_ah for e in self.entries if abs(e.current_a - nearest) <= CURRENT_FRACTION * nearest]
        return statistics.median(similar[-MEDIAN_OF:]) if similar else None
