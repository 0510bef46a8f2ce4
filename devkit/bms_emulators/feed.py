"""The pack an emulator reports: a PackSimulator behind a lock, stepped by wall clock or by hand.

``realtime=True`` (the CLI): each read advances the simulation by the wall time since the last step
times ``time_acceleration``, at most every ``min_step_wall_s`` so the requests of one poll see one
state. ``realtime=False`` (tests, benchmarks): the state only changes when :meth:`advance` is called,
so a test can compare a driver's Sample with :meth:`state` exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hardware.simulator.model import PackSimulator
from hardware.simulator.state import PackState
from schema.simulator_settings import SimulatorSettings


class PackFeed:
    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        realtime: bool = False,
        min_step_wall_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self._sim = PackSimulator(self.settings)
        self._lock = threading.Lock()
        self.realtime = realtime
        self.min_step_wall_s = min_step_wall_s
        self._clock = clock
        self._last_step = clock()

    @property
    def cells(self) -> int:
        return self.settings.cells_series

    def state(self) -> PackState:
        with self._lock:
            if self.realtime:
                now = self._clock()
                elapsed = now - self._last_step
                if elapsed >= self.min_step_wall_s:
                    self._last_step = now
                    return self._sim.step(elapsed * self.settings.time_acceleration)
            return self._sim.state

    def advance(self, dt_s: float) -> PackState:
        """Advance the simulation by ``dt_s`` simulated seconds and return the new state."""
        with self._lock:
            self._last_step = self._clock()
            return self._sim.step(dt_s)
