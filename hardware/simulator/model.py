"""Physics model of a series pack of NMC/graphite 18650-like cells under a repeating duty cycle.

Everything is pure Python floats (no numpy per step) so a pack runs ~10^5 simulated seconds per wall
second. ``step(dt)`` advances simulated time by ``dt`` in sub-steps of at most ``max_substep_s`` (1 s),
split at rest ends, pulse edges and the depth-of-discharge limit, so results hardly depend on ``dt``.

Conventions: current ``I`` in A, **positive = charging**; SoC ``s`` in 0..1 relative to the cell's
current capacity; temperatures in K inside the model, °C at the interface.

Cell electrical model (per series cell ``k``; every cell carries the same pack current)
-----------------------------------------------------------------------------------------
* Open-circuit voltage, a smooth fit to a published-style NMC/graphite low-rate curve, normalised to
  exactly 3.0 V at s = 0 and 4.2 V at s = 1 (monotonic)::

      OCV(s) = a0 + a1·s + a2·s² + a3·s³ + a4·exp(-s / 0.04)

  (3.00 V, 3.39 V at 5 %, 3.60 V at 20 %, 3.78 V at 50 %, 4.02 V at 80 %, 4.20 V at 100 %).
* Terminal voltage ``V = OCV(s) + V_rc + I·(R0 + R_dep(s))``, with one RC pair integrated exactly for
  a current held over a sub-step ``h``::

      V_rc ← V_rc·exp(-h/τ1) + I·R1·(1 - exp(-h/τ1)),   τ1 = R1·C1

* ``R_dep(s) = r_dep·exp(-s/s_dep)`` is the depletion (solid-diffusion) overpotential that makes the
  loaded voltage collapse near empty, so the cut-off voltage is reached at ~0.5-1.5 % SoC (a real
  cell's "knee"); it is negligible above ~10 % SoC.
* Coulomb counting: ``ds/dt = I / (3600·C_k)``, coulombic efficiency 1, clamped to 0..1.
* Every resistance scales with temperature and ageing: ``R(T, age) = R·f_T(T)·g_age`` with
  ``f_T = exp(Ea_R/R_gas·(1/T - 1/T_ref))`` and ``g_age = 1 + g·(1 - C/C0)/0.2`` (so +g at 80 % SoH).
  τ1 is held constant (C1 shrinks as R1 grows).

Thermal model (one lumped node for the pack; exact exponential update per sub-step)
------------------------------------------------------------------------------------
    m·cp·dT/dt = Σ_k [ I²·(R0 + R_dep)_k + V_rc,k² / R1,k ] - hA·(T - T_amb)

Capacity fade (common to all cells; ``C_k = C0_k·exp(f_d)``)
-------------------------------------------------------------
    f_d = -(q_cyc + q_cal)
    q_cyc = k_cyc·A(T)·S(c)·F·EFC^z        (EFC = discharge throughput / C0)
    q_cal = k_cal·A(T)·F·sqrt(t_days)
    A(T)  = exp(Ea/R_gas·(1/T_ref - 1/T))  (Arrhenius, Ea = 31.7 kJ/mol, T_ref = 298.15 K)
    S(c)  = exp(Ea_c·(c - 1)/(R_gas·T))    (discharge C-rate stress after Wang et al. 2011, 1 at 1C)

``F`` is ``ageing_factor``. A pack may start with a life already lived (``initial_equivalent_cycles``,
``initial_age_days``): both terms then start from their closed form at ambient temperature
(:mod:`hardware.simulator.life`). Both terms are integrated incrementally in their differential form so that
varying temperature and C-rate are handled: over a sub-step with the stress frozen, each term moves along
its own power law from the *equivalent* throughput/time that reproduces its current value (the
"virtual throughput" method; exact at constant stress, no singularity at t = 0)::

    q_cyc ← B·((q_cyc/B)^(1/z) + ΔEFC)^z,   B = k_cyc·A·S·F
    q_cal ← Bc·sqrt((q_cal/Bc)² + Δt_days), Bc = k_cal·A·F

Defaults (per cell of nominal capacity C0 in Ah; the pack's cells all have capacity C0 nominal)
------------------------------------------------------------------------------------------------
==========================  ==================  =====================================================
R0                          0.060 Ω·Ah / C0     30 mΩ for a 2 Ah cell
R1                          0.030 Ω·Ah / C0     15 mΩ for a 2 Ah cell
τ1                          40 s
r_dep, s_dep                1.2 Ω·Ah / C0, 0.01
Ea_R                        20 kJ/mol           resistance x4 at -20 °C, x0.6 at 45 °C
m·cp                        20 J/K per Ah       40 J/K for a 2 Ah 18650 (45 g x 0.9 J/g/K)
hA                          0.015 W/K per Ah    30 mW/K per 2 Ah cell: τ_th ≈ 22 min
Ea, T_ref                   31.7 kJ/mol, 298.15 K
k_cyc, z                    0.0048, 0.55        80 % after ~640 EFC at 25 °C, 1C/0.5C, 100 % DoD
k_cal                       0.002 /sqrt(day)    ~4 % in a year at 25 °C
Ea_c                        370.3 J/mol per C   C-rate stress (Wang et al. 2011)
g                           0.5                 +50 % resistance at 80 % capacity
capacity floor              5 % of C0           fade stops there (a dead cell, no NaN)
cell spread                 capacity ±1 %, R ±3 % (uniform, from the seed; capacities are rescaled so
                            the weakest cell has exactly C0, hence pack capacity = C0·exp(f_d))
==========================  ==================  =====================================================

Pack: voltage = Σ cells; usable capacity = weakest cell (``C0·exp(f_d)``); remaining charge =
``min_k s_k·C_k`` (what can be drawn before the first cell is empty); reported ``resistance_ohm`` is the
ohmic ``Σ R0_k`` at the present temperature and age (not R1 nor R_dep).

Duty cycle (a state machine)
----------------------------
Start fully charged (s = 1), at rest, T = T_amb. Then repeat:

1. ``rest`` for ``rest_after_charge_s``.
2. ``discharge`` at ``discharge_c_rate``·C0 — constant ("cc") or "pulse": ``30 s at 16/7·c`` then
   ``90 s at 4/7·c`` (ratio 4, mean c; 2.29C/0.57C for 1C) — until ``depth_of_discharge`` x present
   capacity has been removed, or the lowest cell reaches ``discharge_cutoff_per_cell_v``, or a cell is
   empty. Every ``checkup_every``-th discharge, starting with the first, is a check-up: constant 0.5C
   down to the cut-off whatever the depth of discharge, so a cycle tracker can measure capacity.
   ``cycle_count`` increments at the end of each discharge.
3. ``rest`` for ``rest_after_discharge_s``.
4. ``charge_cc`` at ``charge_c_rate``·C0 until a cell's terminal voltage would exceed
   ``charge_voltage_per_cell_v``, then ``charge_cv``: each sub-step the current is solved so that the
   highest cell ends it at that voltage; the charge ends when the current falls below
   ``charge_cutoff_c_rate``·C0 (or after 4 h of CV, or when a cell is full), or — partial cycles — as soon as
   the pack's true SoC reaches ``charge_stop_soc`` (default 1: never early).

The voltage cut-off is decided like a cycler does, on its *reading*: the discharge ends at the first
``step()`` whose measured (noisy) lowest cell voltage is at or below the cut-off — the reading that
``step()`` returns, so a downstream cycle tracker always sees the crossing, whatever ``dt``. Between
readings a hardware clamp limits the current so the true lowest cell never falls more than
``cutoff_overshoot_v`` (20 mV) below the cut-off: a constant-voltage tail of at most ``cutoff_hold_s``
(10 s, < 0.1 % of capacity), after which the discharge ends without a reading. So readings up to 10 s
apart always show the crossing; with longer steps the crossing falls between readings, as it would with a
real pack polled that slowly.

A current sensor's constant offset (``current_offset_a``, default 0) is added to every current reading, never
to the model's true current (what a battery SoC estimator has to live with).

Sensor noise: Gaussian, from ``random.Random(seed)`` (which first draws the manufacturing spread), on the
pack voltage, each cell voltage, the current and the temperature. The run is fully deterministic for a
given seed and sequence of ``step()`` calls.
"""

from __future__ import annotations

import logging
import math
import random

from hardware.simulator.cell import (
    OCV_COEFFICIENTS,
    OCV_EXP_CUT,
    OCV_INV_TAU,
    OCV_MAX_V,
    CellParameters,
    open_circuit_slope,
    open_circuit_voltage,
)
from hardware.simulator.life import aged_fade
from hardware.simulator.state import PackState
from schema.simulator_settings import SimulatorSettings

log = logging.getLogger(__name__)

GAS_CONSTANT = 8.314462618  # J/(mol·K)
ZERO_C_K = 273.15
SECONDS_PER_DAY = 86_400.0

CHARGE_CC = "charge_cc"
CHARGE_CV = "charge_cv"
REST = "rest"
DISCHARGE = "discharge"


#: per-cell SoC, per-cell V_rc, per-cell terminal voltage (end of a sub-step), heat generated (W)
_Evaluation = tuple[list[float], list[float], list[float], float]


class PackSimulator:
    """A series pack under a repeating charge/rest/discharge duty cycle. See the module docstring."""

    def __init__(self, settings: SimulatorSettings, params: CellParameters | None = None) -> None:
        self._settings = settings.model_copy()  # later edits of the caller's object do not leak in
        st = self._settings
        p = self._params = params or CellParameters()
        n = st.cells_series
        c0 = st.capacity_ah
        self._rng = random.Random(st.seed)
        rng = self._rng
        cap_f: list[float] = []
        res_f: list[float] = []
        for _ in range(n):
            cap_f.append(1.0 + p.capacity_spread * rng.uniform(-1.0, 1.0))
            res_f.append(1.0 + p.resistance_spread * rng.uniform(-1.0, 1.0))
        weakest = min(cap_f)
        self._cap0 = [c0 * f / weakest for f in cap_f]  # Ah at beginning of life; min == C0
        self._inv_cap0 = [1.0 / c for c in self._cap0]
        self._r0 = [p.r0_ohm_ah / c0 * f for f in res_f]
        self._r1 = [p.r1_ohm_ah / c0 * f for f in res_f]
        self._rdep = [p.r_dep_ohm_ah / c0 * f for f in res_f]
        self._c0 = c0
        self._n = n
        # state
        self._soc = [1.0] * n
        self._vrc = [0.0] * n
        self._v = [OCV_MAX_V] * n
        self._amb_k = st.ambient_c + ZERO_C_K
        self._temp_k = self._amb_k
        self._heat_cap = n * p.heat_capacity_j_k_ah * c0
        self._ha = n * p.h_a_w_k_ah * c0
        self._q_cyc = 0.0
        self._q_cal = 0.0
        self._fade = 1.0
        self._g_age = 1.0
        self._rf = self._temperature_factor(self._temp_k)
        self._t = 0.0
        self._throughput_ah = 0.0
        if st.initial_equivalent_cycles > 0.0 or st.initial_age_days > 0.0:  # a life already lived
            aged = aged_fade(st, p, st.initial_equivalent_cycles, st.initial_age_days)
            self._q_cyc, self._q_cal, self._fade = aged.q_cyc, aged.q_cal, aged.fade
            self._g_age = 1.0 + p.resistance_growth * (1.0 - self._fade) / 0.2
            self._rf *= self._g_age
            self._throughput_ah = st.initial_equivalent_cycles * c0
        self._cycles = 0
        self._phase = REST
        self._after_rest = DISCHARGE
        self._rest_left = st.rest_after_charge_s
        self._dis_elapsed = 0.0
        self._dis_removed_ah = 0.0
        self._dis_target_ah = math.inf
        self._dis_rate_c = st.discharge_c_rate
        self._dis_checkup = False
        self._hold_elapsed = 0.0
        self._cv_elapsed = 0.0
        self._last_i = 0.0
        self._last_phase = REST
        # constants and caches
        self._ea_r = p.ea_ageing_j_mol / GAS_CONSTANT
        self._inv_tref = 1.0 / p.t_ref_k
        self._inv_z = 1.0 / p.z_cyc
        self._rc_h = -1.0
        self._rc_e = 1.0
        self._th_h = -1.0
        self._th_e = 1.0
        self._state = self._measure()

    # -- public ------------------------------------------------------------------------------------
    @property
    def settings(self) -> SimulatorSettings:
        return self._settings

    @property
    def params(self) -> CellParameters:
        return self._params

    @property
    def state(self) -> PackState:
        """The state returned by the last :meth:`step` (the initial state before any step)."""
        return self._state

    @property
    def phase(self) -> str:
        """The duty-cycle phase the next sub-step will run in."""
        return self._phase

    @property
    def checkup_in_progress(self) -> bool:
        return self._phase == DISCHARGE and self._dis_checkup

    @property
    def cell_soc(self) -> tuple[float, ...]:
        """True per-cell state of charge (0..1)."""
        return tuple(self._soc)

    @property
    def cell_capacities_ah(self) -> tuple[float, ...]:
        """True present capacity of each cell (Ah)."""
        return tuple(c * self._fade for c in self._cap0)

    @property
    def temperature_c(self) -> float:
        """True lumped pack temperature (°C)."""
        return self._temp_k - ZERO_C_K

    def step(self, dt_s: float) -> PackState:
        """Advance simulated time by ``dt_s`` seconds and return the measured state at the end."""
        if not (dt_s > 0.0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be a finite number > 0 (got {dt_s!r})")
        t_end = self._t + dt_s
        max_h = self._params.max_substep_s
        remaining = dt_s
        while remaining > 1e-9:
            phase = self._phase
            if phase == REST:
                left = self._rest_left
                if left <= 1e-9:
                    self._end_rest()
                    continue
                h = min(remaining, max_h, left)
                self._commit(h, 0.0, self._evaluate(h, 0.0), REST)
                self._rest_left = left - h
            elif phase == DISCHARGE:
                h = self._discharge_substep(min(remaining, max_h))
            else:
                h = self._charge_substep(min(remaining, max_h))
            remaining -= h
        self._t = t_end
        state = self._state = self._measure()
        if (
            self._phase == DISCHARGE
            and self._last_phase == DISCHARGE
            and min(state.cell_voltages_v) <= self._settings.discharge_cutoff_per_cell_v
        ):
            self._end_discharge()  # the cycler stops on its own reading, the one reported
        return state

    # -- electrical core ---------------------------------------------------------------------------
    def _rc_decay(self, h: float) -> float:
        if h != self._rc_h:
            self._rc_h = h
            self._rc_e = math.exp(-h / self._params.tau1_s)
        return self._rc_e

    def _evaluate(self, h: float, i: float) -> _Evaluation:
        """Per-cell (SoC, V_rc, terminal V) at the end of a sub-step of ``h`` s at current ``i``, and the
        heat (W) generated. Does not change the state."""
        e = self._rc_decay(h)
        rf = self._rf
        ki = i * h / (3600.0 * self._fade)
        gain = i * (1.0 - e) * rf
        ir = i * rf
        s_dep = 1.0 / self._params.soc_dep
        exp = math.exp
        a0, a1, a2, a3, a4 = OCV_COEFFICIENTS
        socs: list[float] = []
        vrcs: list[float] = []
        volts: list[float] = []
        r_sum = 0.0
        p_rc = 0.0
        cells = zip(self._soc, self._vrc, self._inv_cap0, self._r0, self._r1, self._rdep, strict=True)
        for s0, vr0, inv_c, r0, r1, rd in cells:
            s = s0 + ki * inv_c
            if s > 1.0:
                s = 1.0
            elif s < 0.0:
                s = 0.0
            vr = vr0 * e + gain * r1
            ocv = a0 + s * (a1 + s * (a2 + s * a3))
            if s < OCV_EXP_CUT:
                ocv += a4 * exp(-s * OCV_INV_TAU)
                r = r0 + rd * exp(-s * s_dep)
            else:
                r = r0
            socs.append(s)
            vrcs.append(vr)
            volts.append(ocv + vr + ir * r)
            r_sum += r
            p_rc += vr * vr / r1
        heat = i * i * r_sum * rf + p_rc / rf
        return socs, vrcs, volts, heat

    def _solve_current(self, h: float, target_v: float, *, limit: str) -> float:
        """Current that brings the binding cell to ``target_v`` at the end of a sub-step of ``h`` s.

        Linearised about the start of the sub-step (exact for the RC and ohmic terms; the OCV moves by
        < 1 mV over a sub-step). ``limit = "upper"``: no cell may exceed ``target_v`` → the smallest
        current over cells; ``"lower"``: no cell may fall below it → the largest (least negative)."""
        e = self._rc_decay(h)
        rf = self._rf
        k_soc = h / (3600.0 * self._fade)
        s_dep = 1.0 / self._params.soc_dep
        upper = limit == "upper"
        best = math.inf if upper else -math.inf
        cells = zip(self._soc, self._vrc, self._inv_cap0, self._r0, self._r1, self._rdep, strict=True)
        for s, vr, inv_c, r0, r1, rd in cells:
            r = r0 + rd * math.exp(-s * s_dep)
            den = (r + r1 * (1.0 - e)) * rf + open_circuit_slope(s) * k_soc * inv_c
            cur = (target_v - open_circuit_voltage(s) - vr * e) / den
            best = min(best, cur) if upper else max(best, cur)
        return best

    def _commit(self, h: float, i: float, ev: _Evaluation, phase: str) -> None:
        """Apply a sub-step evaluated by :meth:`_evaluate`: electrical state, heat, ageing, clock."""
        p = self._params
        socs, vrcs, volts, heat = ev
        self._soc = socs
        self._vrc = vrcs
        self._v = volts
        # thermal: exact for heat held over the sub-step
        if h != self._th_h:
            self._th_h = h
            self._th_e = math.exp(-h * self._ha / self._heat_cap)
        t_ss = self._amb_k + heat / self._ha
        temp = t_ss + (self._temp_k - t_ss) * self._th_e
        if not math.isfinite(temp):  # cannot happen with finite inputs; never let NaN in
            temp = self._amb_k
        temp = min(max(temp, 150.0), 700.0)
        self._temp_k = temp
        # ageing, in differential ("virtual throughput / time") form
        arr = math.exp(self._ea_r * (self._inv_tref - 1.0 / temp)) * self._settings.ageing_factor
        bc = p.k_cal_per_sqrt_day * arr
        if bc > 0.0:
            x = self._q_cal / bc
            self._q_cal = bc * math.sqrt(x * x + h / SECONDS_PER_DAY)
        if i < 0.0:
            ah = -i * h / 3600.0
            self._throughput_ah += ah
            self._dis_removed_ah += ah
            c_rate = -i / self._c0
            b = p.k_cyc * arr * math.exp(p.crate_ea_j_mol_per_c * (c_rate - 1.0) / (GAS_CONSTANT * temp))
            if b > 0.0:
                self._q_cyc = b * ((self._q_cyc / b) ** self._inv_z + ah / self._c0) ** p.z_cyc
        fade = math.exp(-(self._q_cyc + self._q_cal))
        self._fade = max(fade, p.capacity_floor)
        self._g_age = 1.0 + p.resistance_growth * (1.0 - self._fade) / 0.2
        self._rf = self._temperature_factor(temp) * self._g_age
        self._t += h
        self._last_i = i
        self._last_phase = phase

    def _temperature_factor(self, temp_k: float) -> float:
        p = self._params
        return math.exp(p.ea_resistance_j_mol / GAS_CONSTANT * (1.0 / temp_k - 1.0 / p.t_ref_k))

    # -- duty cycle --------------------------------------------------------------------------------
    def _charge_substep(self, h: float) -> float:
        st = self._settings
        i_cc = st.charge_c_rate * self._c0
        v_max = st.charge_voltage_per_cell_v
        i = i_cc
        ev: _Evaluation | None = None
        if self._phase == CHARGE_CC:
            ev = self._evaluate(h, i)
            if max(ev[2]) > v_max:
                log.debug("t=%.0f s: CC -> CV (max cell %.3f V)", self._t, max(ev[2]))
                self._phase = CHARGE_CV
                self._cv_elapsed = 0.0
        if self._phase == CHARGE_CV:
            i = min(i_cc, max(0.0, self._solve_current(h, v_max, limit="upper")))
            ev = self._evaluate(h, i)
        assert ev is not None
        self._commit(h, i, ev, self._phase)
        if self._phase == CHARGE_CV:
            self._cv_elapsed += h
            if i < st.charge_cutoff_c_rate * self._c0 or self._cv_elapsed >= self._params.cv_timeout_s:
                self._end_charge()
                return h
        if max(self._soc) >= 1.0 or min(self._soc) >= st.charge_stop_soc:
            self._end_charge()  # a cell is full (only when the charge voltage is above OCV(1) = 4.2 V), or the
            # pack reached the charge_stop_soc of partial cycles
        return h

    def _discharge_current(self, h: float) -> tuple[float, float]:
        """(current, sub-step length) for the discharge at the present time, honouring pulse edges."""
        rate = self._dis_rate_c
        if self._dis_checkup or self._settings.discharge_profile == "cc":
            return -rate * self._c0, h
        p = self._params
        period = p.pulse_high_s + p.pulse_low_s
        mean_unit = (p.pulse_high_s * p.pulse_ratio + p.pulse_low_s) / period
        pos = math.fmod(self._dis_elapsed, period)
        if period - pos < 1e-9:
            pos = 0.0
        if pos < p.pulse_high_s - 1e-9:
            level = p.pulse_ratio / mean_unit
            to_edge = p.pulse_high_s - pos
        else:
            level = 1.0 / mean_unit
            to_edge = period - pos
        return -rate * level * self._c0, min(h, to_edge)

    def _discharge_substep(self, h_max: float) -> float:
        i, h = self._discharge_current(h_max)
        end = False
        left = self._dis_target_ah - self._dis_removed_ah
        if -i * h / 3600.0 >= left:
            h = max(left * 3600.0 / -i, 1e-9)
            end = True
        ev = self._evaluate(h, i)
        floor = self._settings.discharge_cutoff_per_cell_v - self._params.cutoff_overshoot_v
        clamped = min(ev[2]) < floor
        if clamped:
            # the cycler's hardware clamp: hold the lowest cell at the floor until the next reading
            i, ev = self._clamp_discharge(h, i, floor)
        self._commit(h, i, ev, DISCHARGE)
        self._dis_elapsed += h
        if clamped:
            self._hold_elapsed += h
        if end or min(self._soc) <= 0.0 or self._hold_elapsed >= self._params.cutoff_hold_s:
            self._end_discharge()  # depth of discharge reached, a cell is empty, or no reading came
        return h

    def _clamp_discharge(self, h: float, i_req: float, floor: float) -> tuple[float, _Evaluation]:
        """The discharge current (between ``i_req`` < 0 and 0) that ends the sub-step with the lowest cell
        at ``floor``: a linearised solve refined by regula falsi (the depletion term is strongly
        non-linear near empty at high current)."""
        lo, f_lo = i_req, min(self._evaluate(h, i_req)[2]) - floor  # too much current: f_lo < 0
        hi = 0.0
        ev_hi = self._evaluate(h, hi)
        f_hi = min(ev_hi[2]) - floor
        if f_hi <= 0.0:
            return hi, ev_hi  # even no current ends below the floor: stop drawing
        i = min(hi, max(lo, self._solve_current(h, floor, limit="lower")))
        ev = self._evaluate(h, i)
        for _ in range(8):
            f = min(ev[2]) - floor
            if -1e-4 <= f <= 1e-3:
                break
            if f < 0.0:
                lo, f_lo = i, f
            else:
                hi, f_hi, ev_hi = i, f, ev
            i = lo + (hi - lo) * (-f_lo) / (f_hi - f_lo)
            ev = self._evaluate(h, i)
        if min(ev[2]) < floor - 1e-4:
            return hi, ev_hi  # fall back to the bracket end that is above the floor
        return i, ev

    def _end_charge(self) -> None:
        log.debug("t=%.0f s: charge done (I=%.3f A)", self._t, self._last_i)
        self._phase = REST
        self._rest_left = self._settings.rest_after_charge_s
        self._after_rest = DISCHARGE

    def _end_discharge(self) -> None:
        self._cycles += 1
        log.debug(
            "t=%.0f s: discharge %d done (%s, %.4f Ah, min cell %.3f V, capacity %.4f Ah)",
            self._t,
            self._cycles,
            "check-up" if self._dis_checkup else "regular",
            self._dis_removed_ah,
            min(self._v),
            self._c0 * self._fade,
        )
        self._phase = REST
        self._rest_left = self._settings.rest_after_discharge_s
        self._after_rest = CHARGE_CC

    def _end_rest(self) -> None:
        st = self._settings
        if self._after_rest == DISCHARGE:
            self._phase = DISCHARGE
            self._dis_checkup = self._cycles % st.checkup_every == 0
            self._dis_elapsed = 0.0
            self._dis_removed_ah = 0.0
            self._hold_elapsed = 0.0
            if self._dis_checkup:
                self._dis_rate_c = self._params.checkup_c_rate
                self._dis_target_ah = math.inf
            else:
                self._dis_rate_c = st.discharge_c_rate
                dod = st.depth_of_discharge
                self._dis_target_ah = math.inf if dod >= 1.0 else dod * self._c0 * self._fade
        else:
            self._phase = CHARGE_CC
            self._cv_elapsed = 0.0

    # -- measurement -------------------------------------------------------------------------------
    def _measure(self) -> PackState:
        st = self._settings
        gauss = self._rng.gauss
        sv = st.noise_voltage_v
        volts = self._v
        pack_v = sum(volts)
        if sv > 0.0:
            pack_v += gauss(0.0, sv)
            cells = tuple([v + gauss(0.0, sv) for v in volts])
        else:
            cells = tuple(volts)
        current = self._last_i + st.current_offset_a
        if st.noise_current_a > 0.0:
            current += gauss(0.0, st.noise_current_a)
        temp_c = self._temp_k - ZERO_C_K
        measured_temp = temp_c + gauss(0.0, st.noise_temperature_c) if st.noise_temperature_c > 0.0 else temp_c
        fade = self._fade
        remaining_norm = min(s * c for s, c in zip(self._soc, self._cap0, strict=True))  # Ah at BOL capacity scale
        full = self._c0 * fade
        soc_pct = min(100.0, max(0.0, 100.0 * remaining_norm / self._c0))
        return PackState(
            t_s=self._t,
            voltage_v=pack_v,
            current_a=current,
            cell_voltages_v=cells,
            temperatures_c=(measured_temp,),
            ambient_c=st.ambient_c,
            soc_pct=soc_pct,
            remaining_ah=remaining_norm * fade,
            full_capacity_ah=full,
            design_capacity_ah=self._c0,
            cycle_count=self._cycles,
            equivalent_full_cycles=self._throughput_ah / self._c0,
            resistance_ohm=sum(self._r0) * self._rf,
            phase=self._last_phase,
        )
