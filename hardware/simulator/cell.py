"""The simulated cell: its open-circuit voltage curve and its physical constants.

How the constants enter the electrical, thermal and ageing model, with units, is in the docstring of
:mod:`hardware.simulator.model` (the pack that steps these cells in time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- open-circuit voltage -------------------------------------------------------------------------
# Least-squares fit of a1..a4 to an NMC/graphite low-rate OCV table, then scaled so that OCV(0) = 3.0 V
# and OCV(1) = 4.2 V exactly.
OCV_MIN_V = 3.0
OCV_MAX_V = 4.2
_OCV_TAU = 0.04
_RAW = (3.51612227, 0.34308142, 0.44180844, -0.10494676, -0.51012152)


def _raw_ocv(s: float) -> float:
    a0, a1, a2, a3, a4 = _RAW
    return a0 + s * (a1 + s * (a2 + s * a3)) + a4 * math.exp(-s / _OCV_TAU)


_SCALE = (OCV_MAX_V - OCV_MIN_V) / (_raw_ocv(1.0) - _raw_ocv(0.0))
_A1, _A2, _A3, _A4 = (_SCALE * a for a in _RAW[1:])
_A0 = OCV_MIN_V - _SCALE * (_raw_ocv(0.0) - _RAW[0])
#: a0..a4 of OCV(s) above, scaled (the pack model inlines the polynomial in its inner loop)
OCV_COEFFICIENTS: tuple[float, float, float, float, float] = (_A0, _A1, _A2, _A3, _A4)
OCV_INV_TAU = 1.0 / _OCV_TAU
OCV_EXP_CUT = 0.6  # above this SoC the exponential term is < 0.2 µV: skipped


def open_circuit_voltage(soc: float) -> float:
    """OCV (V) of one cell at state of charge ``soc`` (0..1, clamped)."""
    s = min(1.0, max(0.0, soc))
    v = _A0 + s * (_A1 + s * (_A2 + s * _A3))
    if s < OCV_EXP_CUT:
        v += _A4 * math.exp(-s * OCV_INV_TAU)
    return v


def open_circuit_slope(soc: float) -> float:
    """dOCV/dSoC (V per unit SoC)."""
    s = min(1.0, max(0.0, soc))
    return _A1 + s * (2.0 * _A2 + 3.0 * s * _A3) - _A4 * OCV_INV_TAU * math.exp(-s * OCV_INV_TAU)


@dataclass(frozen=True, slots=True)
class CellParameters:
    """Physical constants of the cell model (see :mod:`hardware.simulator.model` for units and meaning)."""

    r0_ohm_ah: float = 0.060
    r1_ohm_ah: float = 0.030
    tau1_s: float = 40.0
    r_dep_ohm_ah: float = 1.2
    soc_dep: float = 0.01
    ea_resistance_j_mol: float = 20_000.0
    heat_capacity_j_k_ah: float = 20.0
    h_a_w_k_ah: float = 0.015
    ea_ageing_j_mol: float = 31_700.0
    t_ref_k: float = 298.15
    k_cyc: float = 0.0048
    z_cyc: float = 0.55
    k_cal_per_sqrt_day: float = 0.002
    crate_ea_j_mol_per_c: float = 370.3
    resistance_growth: float = 0.5
    capacity_floor: float = 0.05
    capacity_spread: float = 0.01
    resistance_spread: float = 0.03
    max_substep_s: float = 1.0
    pulse_high_s: float = 30.0
    pulse_low_s: float = 90.0
    pulse_ratio: float = 4.0
    checkup_c_rate: float = 0.5
    cv_timeout_s: float = 4.0 * 3600.0
    cutoff_overshoot_v: float = 0.02
    cutoff_hold_s: float = 10.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(f"CellParameters.{name} must be finite and >= 0 (got {value!r})")
        for name in ("r0_ohm_ah", "r1_ohm_ah", "tau1_s", "soc_dep", "heat_capacity_j_k_ah", "h_a_w_k_ah"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"CellParameters.{name} must be > 0")
        if not 0.0 < self.z_cyc <= 1.0:
            raise ValueError("CellParameters.z_cyc must be in (0, 1]")
        if not 0.0 < self.max_substep_s <= 60.0:
            raise ValueError("CellParameters.max_substep_s must be in (0, 60]")
        if not 0.0 < self.capacity_floor < 1.0:
            raise ValueError("CellParameters.capacity_floor must be in (0, 1)")
        if self.pulse_high_s <= 0.0 or self.pulse_low_s <= 0.0 or self.pulse_ratio < 1.0:
            raise ValueError("pulse durations must be > 0 and pulse_ratio >= 1")
        if self.checkup_c_rate <= 0.0:
            raise ValueError("CellParameters.checkup_c_rate must be > 0")
