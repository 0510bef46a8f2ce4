"""Open-circuit voltage against state of charge, per cell, one table per chemistry.

A table is a list of (SoC, OCV) knots joined by straight lines; OCV must rise strictly so that it can be
inverted. What a rest reading is worth depends on the slope: on LFP's plateau a 10 mV error is 10+ pp of
SoC, so the caller weights each correction by ``slope`` (see :mod:`device_agent.soc.estimator`).

* ``nmc`` — NMC / NCA / LCO on graphite: the low-rate NMC curve the physics simulator uses
  (``hardware.simulator.cell``, 3.0 V empty, 4.2 V full) sampled every 5 %. LCO's curve is close enough
  for a starting point (it sits within a few tens of mV of it over 10–100 %).
* ``lfp`` — LiFePO4 on graphite: a typical low-rate curve, 2.5 V empty, 3.45 V full, with the long
  plateau (about 3.26–3.34 V from 20 % to 90 %) where voltage says little about SoC.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

Chemistry = Literal["nmc", "lfp"]


@dataclass(frozen=True)
class OcvTable:
    """OCV (V per cell) at SoC knots (0..1), strictly rising in both."""

    name: str
    soc: tuple[float, ...]
    volts: tuple[float, ...]
    #: the per-cell voltage at or above which a charge tapering off counts as full
    full_voltage_v: float

    def __post_init__(self) -> None:
        if len(self.soc) != len(self.volts) or len(self.soc) < 2:
            raise ValueError(f"OCV table {self.name}: needs as many SoC as voltage knots, at least two")
        for seq, what in ((self.soc, "SoC"), (self.volts, "OCV")):
            if any(b <= a for a, b in pairwise(seq)):
                raise ValueError(f"OCV table {self.name}: {what} knots must rise strictly")

    def ocv(self, soc: float) -> float:
        """OCV (V) at ``soc`` (0..1, clamped)."""
        k = self._segment_by_soc(soc)
        s0, s1, v0, v1 = self.soc[k], self.soc[k + 1], self.volts[k], self.volts[k + 1]
        s = min(max(soc, self.soc[0]), self.soc[-1])
        return v0 + (v1 - v0) * (s - s0) / (s1 - s0)

    def soc_at(self, volts: float) -> float:
        """SoC (0..1) whose OCV is ``volts`` (clamped to the table's ends)."""
        v = min(max(volts, self.volts[0]), self.volts[-1])
        k = min(max(bisect_left(self.volts, v) - 1, 0), len(self.volts) - 2)
        v0, v1, s0, s1 = self.volts[k], self.volts[k + 1], self.soc[k], self.soc[k + 1]
        return s0 + (s1 - s0) * (v - v0) / (v1 - v0)

    def slope(self, soc: float) -> float:
        """dOCV/dSoC (V per unit SoC) at ``soc``: the steepness of the segment it falls in."""
        k = self._segment_by_soc(soc)
        return (self.volts[k + 1] - self.volts[k]) / (self.soc[k + 1] - self.soc[k])

    def _segment_by_soc(self, soc: float) -> int:
        s = min(max(soc, self.soc[0]), self.soc[-1])
        return min(max(bisect_left(self.soc, s) - 1, 0), len(self.soc) - 2)


_STEPS = tuple(i / 20 for i in range(21))

OCV_TABLES: dict[Chemistry, OcvTable] = {
    "nmc": OcvTable(
        "nmc",
        _STEPS,
        (3.000, 3.385, 3.511, 3.564, 3.597, 3.626, 3.655, 3.685, 3.717, 3.751, 3.786,
         3.822, 3.860, 3.898, 3.939, 3.980, 4.022, 4.065, 4.109, 4.154, 4.200),
        full_voltage_v=4.15,
    ),
    "lfp": OcvTable(
        "lfp",
        _STEPS,
        (2.500, 3.100, 3.200, 3.230, 3.250, 3.260, 3.270, 3.278, 3.285, 3.290, 3.294,
         3.298, 3.302, 3.308, 3.315, 3.322, 3.328, 3.333, 3.338, 3.355, 3.450),
        full_voltage_v=3.40,
    ),
}  # fmt: skip
