"""The capacity the SoC count runs on, kept between measurements.

Two sources, blended like the SoC itself (a scalar Kalman on the capacity, relative standard deviation):

* the health estimator's **measured capacity** (a discharge counted down to the cut-off): taken as it is
  whenever a new one appears (standard deviation :data:`MEASURED_SD`);
* **partial cycles**: the charge counted between two well-known states of charge (a relaxed rest read
  through the OCV table, or a full charge) is the capacity times the SoC between them. With a span of at least
  :data:`MIN_SPAN_PCT` and both ends known to within :data:`MAX_END_SD_PCT` it is blended in with the standard
  deviation the two ends give it — but only once the measured capacity is :data:`PARTIAL_AFTER_EFC`
  equivalent full cycles old (or there is none): a fresh measurement down to the configured cut-off is the
  better figure (the OCV table's 0 % is an *open-circuit* empty, a little below the loaded cut-off). This is
  what keeps the count right on a battery that never reaches the cut-off, so never gets a new measured
  capacity, while it ages.

Between the two the capacity's uncertainty grows with the charge moved (:data:`DRIFT_SD_PER_EFC`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: standard deviation (relative) of a capacity measured down to the cut-off
MEASURED_SD = 0.01
#: standard deviation (relative) of the rated capacity before anything is measured
RATED_SD = 0.05
#: growth of the relative standard deviation per square root of equivalent full cycle moved
DRIFT_SD_PER_EFC = 0.01
#: a partial cycle must span this much SoC (pp) ...
MIN_SPAN_PCT = 30.0
#: ... between two ends each known to within this (pp)
MAX_END_SD_PCT = 2.5
#: partial cycles refine the capacity once the measured one is this many equivalent full cycles old
PARTIAL_AFTER_EFC = 3.0


@dataclass
class Reference:
    soc_pct: float
    sd_pct: float
    #: the net charge counted (Ah, offset taken off) when this state of charge was known
    counted_ah: float


class CapacityTracker:
    def __init__(self, rated_ah: float | None) -> None:
        self.capacity_ah = rated_ah
        self.sd = RATED_SD
        self.counted_ah = 0.0
        self.partial_updates = 0
        #: partial-cycle updates since the latest measured capacity (then the tracked capacity is the freshest)
        self.partial_since_measured = 0
        #: equivalent full cycles moved since the latest measured capacity (inf: none measured)
        self.efc_since_measured = math.inf
        self._measured: float | None = None
        self._ref: Reference | None = None

    def count(self, delta_ah: float) -> None:
        """Charge moved (Ah, positive in): accumulated, and the capacity's uncertainty grows with it."""
        self.counted_ah += delta_ah
        if self.capacity_ah:
            efc = abs(delta_ah) / (2.0 * self.capacity_ah)
            self.efc_since_measured += efc
            self.sd = math.sqrt(self.sd * self.sd + DRIFT_SD_PER_EFC * DRIFT_SD_PER_EFC * efc)

    def measured(self, capacity_ah: float | None, correction_ah: float = 0.0) -> None:
        """The health estimator's latest measured capacity: taken (plus ``correction_ah``, the sensor offset's
        share in it) when it is a new one."""
        if capacity_ah is None or capacity_ah <= 0.0 or capacity_ah == self._measured:
            return
        self._measured = capacity_ah
        self.efc_since_measured = 0.0
        self.partial_since_measured = 0
        self.capacity_ah, self.sd = max(0.5 * capacity_ah, capacity_ah + correction_ah), MEASURED_SD

    def rated(self, rated_ah: float | None) -> None:
        """A (new) rated capacity: used while nothing was measured."""
        if self._measured is None and self.partial_updates == 0:
            self.capacity_ah = rated_ah

    def reference(self, soc_pct: float, sd_pct: float, counted_ah: float | None = None) -> None:
        """A well-known SoC (the end of a rest, a full charge; ``counted_ah``: the count when it was known, by
        default now): with the previous one, a partial-cycle capacity."""
        ref = Reference(soc_pct, sd_pct, self.counted_ah if counted_ah is None else counted_ah)
        prev, self._ref = self._ref, ref
        if prev is None or self.capacity_ah is None or self.efc_since_measured < PARTIAL_AFTER_EFC:
            return
        span = ref.soc_pct - prev.soc_pct
        if abs(span) < MIN_SPAN_PCT or max(ref.sd_pct, prev.sd_pct) > MAX_END_SD_PCT:
            return
        implied = (ref.counted_ah - prev.counted_ah) / (span / 100.0)
        if implied <= 0.0:
            return  # charge and SoC moved in opposite directions: not a capacity
        sd = math.hypot(ref.sd_pct, prev.sd_pct) / abs(span)
        p, r = self.sd * self.sd, sd * sd
        gain = p / (p + r)
        self.capacity_ah *= 1.0 + gain * (implied / self.capacity_ah - 1.0)
        self.sd = math.sqrt((1.0 - gain) * p)
        self.partial_updates += 1
        self.partial_since_measured += 1

    def forget_reference(self) -> None:
        """The charge moved is unknown from here (a gap under load): no span across it."""
        self._ref = None
