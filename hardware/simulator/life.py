"""A simulated pack's life before the simulation starts: its ageing model in closed form, cycle by cycle.

The pack model (:mod:`hardware.simulator.model`) integrates the fade terms step by step; at a constant stress
(temperature, C-rate) they have a closed form, which is what this module evaluates::

    q_cyc = k_cyc·A(T)·S(c)·F·EFC^z        q_cal = k_cal·A(T)·F·sqrt(days)
    C/C0  = max(exp(-(q_cyc + q_cal)), capacity floor)

with ``T`` the ambient temperature (the few kelvin of self-heating under load are left out, so the life
lived here ages slightly slower than the live simulation under the same stress) and ``c`` the discharge
C-rate. :func:`aged_fade` gives the state a simulator starts in (``SimulatorSettings.initial_equivalent_cycles``
and ``initial_age_days``); :func:`life_history` gives the capacity a cycle tracker would have measured on the
way there, so a demo battery can start with a history (tagged simulated like everything else it sends).

Measured capacity is what a discharge delivers down to the cut-off voltage, a little less than the true
capacity (the IR drop at the cut-off): :func:`measure_discharge` finds that ratio, and the pack's temperature
during the discharge, by running the pack model through a discharge at the given rate, new and aged;
:func:`life_history` interpolates between them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hardware.simulator.cell import CellParameters
from schema.simulator_settings import SimulatorSettings

GAS_CONSTANT = 8.314462618  # J/(mol·K), as in the pack model
ZERO_C_K = 273.15
#: the simulator's step while measuring a discharge (≤ 10 s: the cut-off reading is not missed)
MEASURE_STEP_S = 10.0


@dataclass(frozen=True)
class AgeingTerms:
    q_cyc: float
    q_cal: float
    fade: float  # C/C0 of the weakest cell


def aged_fade(
    settings: SimulatorSettings,
    params: CellParameters,
    equivalent_cycles: float,
    age_days: float,
    c_rate: float | None = None,
) -> AgeingTerms:
    """The fade terms after ``equivalent_cycles`` of discharge throughput and ``age_days`` of calendar life,
    at the settings' ambient temperature, ageing factor and (unless given) discharge C-rate."""
    if not (equivalent_cycles >= 0.0 and age_days >= 0.0) or not math.isfinite(equivalent_cycles + age_days):
        raise ValueError(f"life must be finite and >= 0 (got {equivalent_cycles!r} EFC, {age_days!r} days)")
    temp = settings.ambient_c + ZERO_C_K
    arr = math.exp(params.ea_ageing_j_mol / GAS_CONSTANT * (1.0 / params.t_ref_k - 1.0 / temp)) * settings.ageing_factor
    c = settings.discharge_c_rate if c_rate is None else c_rate
    stress = math.exp(params.crate_ea_j_mol_per_c * (c - 1.0) / (GAS_CONSTANT * temp))
    q_cyc = params.k_cyc * arr * stress * equivalent_cycles**params.z_cyc
    q_cal = params.k_cal_per_sqrt_day * arr * math.sqrt(age_days)
    return AgeingTerms(q_cyc, q_cal, max(math.exp(-(q_cyc + q_cal)), params.capacity_floor))


@dataclass(frozen=True)
class LifePoint:
    """One complete discharge of the life lived: cycle number, throughput and age before it, capacities."""

    cycle: int
    equivalent_cycles: float  # discharge throughput / C0 at the start of this discharge
    age_days: float  # calendar age at the start of this discharge
    capacity_ah: float  # true capacity
    measured_ah: float  # what the discharge delivered to the cut-off at ``c_rate``
    c_rate: float
    mean_temperature_c: float  # the pack's mean and peak temperature during the discharge
    max_temperature_c: float


@dataclass(frozen=True)
class LifeHistory:
    cycles: int
    equivalent_cycles: float  # after the last cycle
    age_days: float  # after the last cycle
    cycles_per_day: float
    points: tuple[LifePoint, ...]


@dataclass(frozen=True)
class DischargeMeasure:
    fraction: float  # charge delivered down to the cut-off / true capacity
    mean_temperature_c: float  # mean pack temperature during that discharge (self-heating included)
    max_temperature_c: float


def measure_discharge(settings: SimulatorSettings, params: CellParameters, c_rate: float) -> DischargeMeasure:
    """What a discharge at ``c_rate`` delivers to the cut-off and how warm the pack runs, for a pack aged as
    ``settings`` say: the pack model runs through two cycles (check-ups, here at ``c_rate``; noise off) and the
    second discharge, which starts from the duty cycle's CC-CV charge like every later one, is measured."""
    from hardware.simulator.model import PackSimulator  # the model imports this module

    quiet = settings.model_copy(
        update={"noise_voltage_v": 0.0, "noise_current_a": 0.0, "noise_temperature_c": 0.0, "checkup_every": 1}
    )
    sim = PackSimulator(quiet, dataclasses.replace(params, checkup_c_rate=c_rate))
    true_ah = sim.state.full_capacity_ah
    before = math.nan
    temps: list[float] = []
    for _ in range(200_000):
        state = sim.step(MEASURE_STEP_S)
        if state.cycle_count == 1 and math.isnan(before) and state.phase != "discharge":
            before = state.equivalent_full_cycles  # the second discharge starts from a CC-CV charge, as live
        elif not math.isnan(before) and state.phase == "discharge":
            temps.append(state.temperatures_c[0])
        if state.cycle_count >= 2:
            fraction = min(1.0, (state.equivalent_full_cycles - before) * state.design_capacity_ah / true_ah)
            temps = temps or [state.temperatures_c[0]]
            return DischargeMeasure(fraction, sum(temps) / len(temps), max(temps))
    raise RuntimeError("the simulated discharge did not end")  # cannot happen: a discharge ends at the cut-off


def measured_fraction(settings: SimulatorSettings, params: CellParameters, c_rate: float) -> float:
    """Charge delivered down to the cut-off at ``c_rate`` / true capacity (:func:`measure_discharge`)."""
    return measure_discharge(settings, params, c_rate).fraction


def life_history(
    settings: SimulatorSettings,
    params: CellParameters | None = None,
    cycles: int = 0,
    cycles_per_day: float = 1.0,
    max_points: int = 60,
    first_points: int = 5,
) -> LifeHistory:
    """The life of a pack cycled ``cycles`` times at ``cycles_per_day`` under the settings' stress, from new.

    Each cycle removes ``depth_of_discharge`` of the present capacity (every ``checkup_every``-th, starting
    with the first, goes down to the cut-off at the check-up rate), so the throughput, and the fade with it,
    are integrated cycle by cycle. The points are the discharges a cycle tracker measures capacity on (those
    that reach the cut-off): the first ``first_points`` of them, then evenly spaced, at most ``max_points``.
    """
    p = params or CellParameters()
    if cycles < 0 or not (cycles_per_day > 0.0 and math.isfinite(cycles_per_day)):
        raise ValueError(f"cycles must be >= 0 and cycles_per_day > 0 (got {cycles!r}, {cycles_per_day!r})")
    if max_points < first_points + 1:
        raise ValueError("max_points must exceed first_points")
    new = settings.model_copy(update={"initial_equivalent_cycles": 0.0, "initial_age_days": 0.0})
    full_depth = settings.depth_of_discharge >= 1.0
    rates = {settings.discharge_c_rate, p.checkup_c_rate} if full_depth else {p.checkup_c_rate}
    candidates: list[int] = []
    for k in range(1, cycles + 1):
        checkup = (k - 1) % settings.checkup_every == 0
        if full_depth or checkup:
            candidates.append(k)
    head = candidates[:first_points]
    rest = candidates[first_points:]
    step = max(1, math.ceil(len(rest) / (max_points - first_points)))
    keep = set(head) | set(rest[step - 1 :: step]) | (set(candidates[-1:]))
    efc = 0.0
    raw: list[tuple[int, float, float, float, float]] = []
    for k in range(1, cycles + 1):
        days = (k - 1) / cycles_per_day
        checkup = (k - 1) % settings.checkup_every == 0
        c = p.checkup_c_rate if checkup else settings.discharge_c_rate
        fade = aged_fade(settings, p, efc, days, c_rate=settings.discharge_c_rate).fade
        if k in keep:
            raw.append((k, efc, days, fade, c))
        efc += fade if (full_depth or checkup) else settings.depth_of_discharge * fade
    age = cycles / cycles_per_day
    end = settings.model_copy(update={"initial_equivalent_cycles": efc, "initial_age_days": age})
    # measured fraction per discharge rate, new and at the end of this life
    measures = {c: (measure_discharge(new, p, c), measure_discharge(end, p, c)) for c in rates}
    end_fade = aged_fade(settings, p, efc, age).fade
    c0 = settings.capacity_ah
    points = []
    for k, e, d, fade, c in raw:
        m0, m1 = measures[c]
        # what a discharge measures drifts with the resistance, which grows linearly with the fade
        w = 0.0 if end_fade >= 1.0 else (1.0 - fade) / (1.0 - end_fade)

        def between(a: float, b: float, w: float = w) -> float:
            return a + w * (b - a)

        points.append(
            LifePoint(
                k,
                e,
                d,
                c0 * fade,
                c0 * fade * between(m0.fraction, m1.fraction),
                c,
                between(m0.mean_temperature_c, m1.mean_temperature_c),
                between(m0.max_temperature_c, m1.max_temperature_c),
            )
        )
    return LifeHistory(cycles, efc, age, cycles_per_day, tuple(points))
