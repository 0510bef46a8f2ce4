"""A scalar Kalman-style blend of coulomb counting (the prediction) and corrections (rest OCV, full charge).

The state is the SoC in percent and its standard deviation. Coulomb counting moves the SoC by the charge
counted over the capacity and widens the uncertainty *linearly* (the errors it accumulates are systematic:
a current-sensor offset adds the same error every hour, a wrong capacity the same fraction of every Ah), by

    Δsd = 100 · (offset_sd_c · Δt_h  +  capacity_sd · |ΔAh| / C)

A correction with its own standard deviation is blended with the usual gain K = P / (P + R), and the
variance shrinks to (1 - K) · P. A correction of small variance (a full charge) resets the count; one of
large variance (a rest on LFP's plateau) nudges it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class SocFilter:
    soc_pct: float
    sd_pct: float

    def predict(self, delta_ah: float, dt_s: float, capacity_ah: float, offset_sd_c: float, capacity_sd: float) -> None:
        """Coulomb counting of ``delta_ah`` (positive = charge in) over ``dt_s`` on ``capacity_ah``."""
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + 100.0 * delta_ah / capacity_ah))
        self.sd_pct += 100.0 * (offset_sd_c * dt_s / 3600.0 + capacity_sd * abs(delta_ah) / capacity_ah)

    def correct(self, measured_pct: float, measured_sd_pct: float) -> float:
        """Blend a measurement of the SoC; returns the gain used (0 = ignored, 1 = taken as is)."""
        p = self.sd_pct * self.sd_pct
        r = measured_sd_pct * measured_sd_pct
        gain = p / (p + r) if p + r > 0.0 else 1.0
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + gain * (measured_pct - self.soc_pct)))
        self.sd_pct = math.sqrt((1.0 - gain) * p)
        return gain

    @staticmethod
    def fused(prior: SocFilter, measured_pct: float, measured_sd_pct: float) -> SocFilter:
        """A copy of ``prior`` corrected by the measurement (``prior`` is left as it was)."""
        out = SocFilter(prior.soc_pct, prior.sd_pct)
        out.correct(measured_pct, measured_sd_pct)
        return out
