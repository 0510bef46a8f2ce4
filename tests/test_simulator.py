"""The physics pack simulator and its source: determinism, duty cycle, physics, ageing, URL options."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest

from hardware.errors import SourceConfigError
from hardware.registry import create_source, parse_source_url
from hardware.simulator.cell import open_circuit_slope, open_circuit_voltage
from hardware.simulator.model import (
    CHARGE_CC,
    CHARGE_CV,
    DISCHARGE,
    REST,
    PackSimulator,
)
from hardware.simulator.source import SimulatorSource, create
from hardware.simulator.state import PackState
from schema.messages import Sample
from schema.simulator_settings import SimulatorSettings
from schema.source_settings import SourceSettings

QUIET = {"noise_voltage_v": 0.0, "noise_current_a": 0.0, "noise_temperature_c": 0.0}
FAST_CYCLE = {"charge_c_rate": 1.0, "rest_after_charge_s": 60.0, "rest_after_discharge_s": 60.0}


def sim_with(**kw: Any) -> PackSimulator:
    return PackSimulator(SimulatorSettings(**kw))


def run_until(
    sim: PackSimulator, done: Callable[[PackState], bool], dt: float = 1.0, max_s: float = 5e6
) -> list[PackState]:
    out: list[PackState] = []
    while not done(sim.state):
        assert sim.state.t_s < max_s, "simulation did not reach the expected condition"
        out.append(sim.step(dt))
    return out


def discharges(states: list[PackState], dt: float) -> list[dict[str, float]]:
    """Per discharge (from the readings only): coulomb count, last reading's lowest cell, capacity then."""
    out: list[dict[str, float]] = []
    cur: dict[str, float] | None = None
    for s in states:
        if s.phase == DISCHARGE:
            if cur is None:
                cur = {"ah": 0.0}
            cur["ah"] += -s.current_a * dt / 3600.0
            cur["last_min_cell"] = min(s.cell_voltages_v)
            cur["capacity"] = s.full_capacity_ah
            cur["cycle"] = s.cycle_count
        elif cur is not None:
            out.append(cur)
            cur = None
    return out


# -- open-circuit voltage ---------------------------------------------------------------------------
def test_ocv_curve_spans_3v0_to_4v2_and_is_monotonic() -> None:
    assert open_circuit_voltage(0.0) == pytest.approx(3.0, abs=1e-9)
    assert open_circuit_voltage(1.0) == pytest.approx(4.2, abs=1e-9)
    grid = [open_circuit_voltage(k / 1000) for k in range(1001)]
    assert all(b > a for a, b in itertools.pairwise(grid))
    assert 3.7 < open_circuit_voltage(0.5) < 3.85  # NMC mid-plateau
    # the analytic slope matches a finite difference
    for s in (0.01, 0.2, 0.5, 0.9):
        fd = (open_circuit_voltage(s + 1e-6) - open_circuit_voltage(s - 1e-6)) / 2e-6
        assert open_circuit_slope(s) == pytest.approx(fd, rel=1e-4)


# -- determinism ------------------------------------------------------------------------------------
def test_same_seed_same_run_different_seed_different_run() -> None:
    dts = [1.0, 2.5, 0.3, 10.0, 7.0] * 600
    a, b, c = sim_with(seed=7), sim_with(seed=7), sim_with(seed=8)
    ra = [a.step(dt) for dt in dts]
    rb = [b.step(dt) for dt in dts]
    rc = [c.step(dt) for dt in dts]
    assert ra == rb
    assert ra != rc
    assert a.cell_capacities_ah == b.cell_capacities_ah != c.cell_capacities_ah


def test_manufacturing_spread_is_small_and_weakest_cell_is_nominal() -> None:
    sim = sim_with(seed=3, cells_series=8, capacity_ah=3.0)
    caps = sim.cell_capacities_ah
    assert min(caps) == pytest.approx(3.0)
    assert max(caps) <= 3.0 * 1.021
    assert len(set(caps)) == 8
    assert sim.state.full_capacity_ah == pytest.approx(3.0)
    assert len(sim.state.cell_voltages_v) == 8


def test_result_hardly_depends_on_dt() -> None:
    results = []
    for dt in (0.25, 1.0, 7.5, 60.0):
        sim = sim_with(**QUIET)
        while sim.state.t_s < 3600.0 - 1e-9:  # 600 s rest + 3000 s of the first discharge
            sim.step(dt)
        results.append((sum(sim.cell_soc), sim.temperature_c, sim.state.voltage_v))
    for soc, temp, volt in results[1:]:
        assert soc == pytest.approx(results[0][0], abs=1e-3)
        assert temp == pytest.approx(results[0][1], abs=0.02)
        assert volt == pytest.approx(results[0][2], abs=0.005)


def test_step_rejects_bad_dt() -> None:
    sim = sim_with()
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            sim.step(bad)


# -- duty cycle -------------------------------------------------------------------------------------
def test_phases_alternate_and_current_sign_convention() -> None:
    sim = sim_with(checkup_every=1000)
    states = run_until(sim, lambda s: s.cycle_count >= 3 and s.phase == REST, dt=2.0)
    assert states[0].phase == REST and states[0].soc_pct > 99.9  # starts full, at rest
    sequence = [states[0].phase]
    for s in states[1:]:
        if s.phase != sequence[-1]:
            sequence.append(s.phase)
    cycle = [REST, DISCHARGE, REST, CHARGE_CC, CHARGE_CV]
    assert sequence[:11] == cycle * 2 + [REST]
    for s in states:
        if s.phase in (CHARGE_CC, CHARGE_CV):
            assert s.current_a > 0.05
        elif s.phase == DISCHARGE:
            assert s.current_a < -0.05
        else:
            assert abs(s.current_a) < 0.03
    cc = [s.current_a for s in states if s.phase == CHARGE_CC]
    assert sum(cc) / len(cc) == pytest.approx(0.5 * 2.0, rel=0.01)  # 0.5C of 2 Ah
    # CV tapers the current down to the cut-off (0.05C = 0.1 A) while the highest cell sits at 4.2 V
    cv = [s for s in states if s.phase == CHARGE_CV]
    assert cv[0].current_a > 0.8 and cv[-1].current_a < 0.1 + 0.02
    assert all(max(s.cell_voltages_v) == pytest.approx(4.2, abs=0.01) for s in cv)
    # cycle_count increments exactly at the end of each discharge
    for prev, cur in itertools.pairwise(states):
        ended = prev.phase == DISCHARGE and cur.phase != DISCHARGE
        assert cur.cycle_count - prev.cycle_count == (1 if ended else 0)


def test_full_1c_discharge_delivers_the_present_capacity() -> None:
    sim = sim_with(seed=5, checkup_every=1000)  # the first discharge is the 0.5C check-up, then 1C
    states = run_until(sim, lambda s: s.cycle_count >= 2, dt=1.0)
    checkup, regular = discharges(states, 1.0)
    for d in (checkup, regular):
        assert d["last_min_cell"] <= 2.7  # the reading that ended it shows the cut-off
        assert d["ah"] == pytest.approx(d["capacity"], rel=0.02)
    assert checkup["ah"] > regular["ah"] * 1.002  # slower discharge delivers a little more
    mean_i = [s.current_a for s in states if s.phase == DISCHARGE and s.cycle_count == 1]
    assert sum(mean_i) / len(mean_i) == pytest.approx(-2.0, rel=0.01)


def test_pulse_profile_has_the_same_mean_current() -> None:
    sim = sim_with(discharge_profile="pulse", checkup_every=1000, **QUIET)
    states = run_until(sim, lambda s: s.cycle_count >= 2, dt=1.0)
    second = [s.current_a for s in states if s.phase == DISCHARGE and s.cycle_count == 1]
    levels = sorted({round(i, 3) for i in second[:240]})
    assert levels[0] == pytest.approx(-2.0 * 16 / 7, rel=1e-3) and levels[-1] == pytest.approx(-2.0 * 4 / 7, rel=1e-3)
    whole = second[: 120 * (len(second) // 120)]
    assert sum(whole) / len(whole) == pytest.approx(-2.0, rel=1e-3)


def test_voltages_stay_within_cutoff_and_charge_voltage() -> None:
    for profile, rate in (("cc", 1.0), ("pulse", 2.0)):
        sim = sim_with(discharge_profile=profile, discharge_c_rate=rate, checkup_every=2, **QUIET, **FAST_CYCLE)
        states = run_until(sim, lambda s: s.cycle_count >= 4, dt=1.0)
        lowest = min(min(s.cell_voltages_v) for s in states)
        highest = max(max(s.cell_voltages_v) for s in states)
        assert 2.7 - 0.025 <= lowest <= 2.7, profile
        assert 4.19 <= highest <= 4.2 + 0.002, profile


def test_partial_dod_reaches_cutoff_only_on_checkups() -> None:
    sim = sim_with(depth_of_discharge=0.5, checkup_every=3, **FAST_CYCLE)
    states = run_until(sim, lambda s: s.cycle_count >= 7, dt=1.0)
    ds = discharges(states, 1.0)
    assert len(ds) == 7
    for k, d in enumerate(ds):
        if k % 3 == 0:  # check-up: full depth to the cut-off
            assert d["last_min_cell"] <= 2.7
            assert d["ah"] == pytest.approx(d["capacity"], rel=0.02)
        else:
            assert d["last_min_cell"] > 3.3
            assert d["ah"] == pytest.approx(0.5 * d["capacity"], rel=0.01)


# -- thermal ----------------------------------------------------------------------------------------
def test_temperature_rises_under_load_and_relaxes_at_rest() -> None:
    sim = sim_with(ambient_c=20.0, checkup_every=1000, rest_after_discharge_s=4 * 3600.0, **QUIET)
    states = run_until(sim, lambda s: s.cycle_count >= 2 and s.phase == REST, dt=1.0)
    end_discharge = [s for s in states if s.phase == DISCHARGE and s.cycle_count == 1][-1]
    assert states[0].temperatures_c[0] == pytest.approx(20.0, abs=0.01)
    assert end_discharge.temperatures_c[0] > 20.0 + 3.0  # 1C in an 18650 pack: a few kelvin
    assert end_discharge.temperatures_c[0] < 20.0 + 15.0
    rest = run_until(sim, lambda s: s.phase != REST, dt=10.0)
    temps = [s.temperatures_c[0] for s in rest if s.phase == REST]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(temps))  # monotonic cooling
    assert temps[-1] == pytest.approx(20.0, abs=0.1)


def test_cold_pack_has_higher_resistance() -> None:
    cold, warm = sim_with(ambient_c=-10.0), sim_with(ambient_c=25.0)
    assert cold.state.resistance_ohm > 2.0 * warm.state.resistance_ohm


# -- ageing -----------------------------------------------------------------------------------------
def _aged(cycles: int, **kw: Any) -> tuple[list[PackState], PackSimulator]:
    sim = sim_with(checkup_every=1000, **FAST_CYCLE, **kw)
    return run_until(sim, lambda s: s.cycle_count >= cycles and s.phase == REST, dt=10.0), sim


def test_capacity_fades_faster_when_hot_and_with_higher_ageing_factor() -> None:
    n = 12
    base, _ = _aged(n, ageing_factor=5.0, ambient_c=25.0)
    hot, _ = _aged(n, ageing_factor=5.0, ambient_c=45.0)
    fast, _ = _aged(n, ageing_factor=15.0, ambient_c=25.0)
    soh = {
        name: run[-1].full_capacity_ah / run[-1].design_capacity_ah
        for name, run in (("base", base), ("hot", hot), ("fast", fast))
    }
    assert 0.80 < soh["base"] < 0.97
    assert 1.0 - soh["hot"] > 1.5 * (1.0 - soh["base"])
    assert 1.0 - soh["fast"] > 1.5 * (1.0 - soh["base"])
    caps = [s.full_capacity_ah for s in base]
    assert all(b <= a for a, b in itertools.pairwise(caps))  # never recovers
    # EFC is the discharge throughput over C0: about one per cycle, a bit less as the cell fades
    assert n * soh["base"] * 0.97 < base[-1].equivalent_full_cycles <= n


def test_resistance_grows_with_fade() -> None:
    states, sim = _aged(15, ageing_factor=20.0, ambient_c=25.0, **QUIET)
    p = sim.params

    def at_25c(s: PackState) -> float:  # remove the (known) temperature dependence of R
        t_k = s.temperatures_c[0] + 273.15
        return s.resistance_ohm / math.exp(p.ea_resistance_j_mol / 8.314462618 * (1.0 / t_k - 1.0 / p.t_ref_k))

    def growth(s: PackState) -> float:  # R0 = R0_init * (1 + g * (1 - C/C0) / 0.2)
        return 1.0 + p.resistance_growth * (1.0 - s.full_capacity_ah / s.design_capacity_ah) / 0.2

    first, last = states[0], states[-1]
    assert 1.0 - last.full_capacity_ah / last.design_capacity_ah > 0.1
    assert at_25c(last) / at_25c(first) == pytest.approx(growth(last) / growth(first), rel=1e-6)
    assert last.resistance_ohm > 1.2 * first.resistance_ohm


@pytest.mark.slow
def test_no_nan_and_physical_clamps_over_a_long_abusive_run() -> None:
    for kw in (
        {"ageing_factor": 3000.0, "ambient_c": 45.0, "discharge_profile": "pulse", "discharge_c_rate": 3.0},
        {"ambient_c": -30.0, "discharge_c_rate": 2.0, "charge_c_rate": 1.0},
        {
            "charge_voltage_per_cell_v": 4.45,
            "discharge_cutoff_per_cell_v": 2.0,
            "rest_after_charge_s": 0.0,
            "rest_after_discharge_s": 0.0,
            "cells_series": 16,
        },
    ):
        sim = sim_with(seed=11, **kw)
        for _ in range(6000):
            s = sim.step(37.0)
            values = [
                s.voltage_v,
                s.current_a,
                s.soc_pct,
                s.remaining_ah,
                s.full_capacity_ah,
                s.equivalent_full_cycles,
                s.resistance_ohm,
                *s.cell_voltages_v,
                *s.temperatures_c,
            ]
            assert all(math.isfinite(v) for v in values), kw
            assert 0.0 <= s.soc_pct <= 100.0
            assert all(0.0 <= x <= 1.0 for x in sim.cell_soc)
            assert 0.0 <= s.remaining_ah <= s.full_capacity_ah * 1.03
            assert s.full_capacity_ah >= 0.05 * s.design_capacity_ah - 1e-12
            assert -60.0 < s.temperatures_c[0] < 150.0
        assert sim.state.cycle_count > 3, kw  # the duty cycle keeps going


# -- the source -------------------------------------------------------------------------------------
def test_source_tags_every_sample_as_simulated() -> None:
    settings = SimulatorSettings(seed=4, start_ts=1_700_000_000.0, time_acceleration=60.0)
    with SimulatorSource(settings, interval_s=5.0) as src:
        assert src.simulated and src.paced
        assert src.source_id == "simulator:4"
        assert src.time_acceleration == 60.0
        samples = [src.poll() for _ in range(200)]
        src.interval_s = 20.0
        samples += [src.poll() for _ in range(10)]
    assert all(isinstance(s, Sample) and s.simulated for s in samples)
    assert all(s.source_id == "simulator:4" for s in samples)
    assert samples[0].ts == pytest.approx(1_700_000_005.0)
    assert samples[199].ts == pytest.approx(1_700_000_000.0 + 1000.0)
    assert samples[-1].ts == pytest.approx(1_700_000_000.0 + 1200.0)
    s = samples[-1]
    assert s.cell_voltages_v is not None and len(s.cell_voltages_v) == 4
    assert s.voltage_v == pytest.approx(sum(s.cell_voltages_v), abs=0.02)
    assert s.soc_pct is not None and 0.0 < s.soc_pct <= 100.0
    assert s.current_a < 0.0  # 600 s rest, then discharging
    with pytest.raises(ValueError):
        SimulatorSource(settings, interval_s=0.0)


def test_create_merges_url_options_into_simulator_settings() -> None:
    base = SourceSettings(sample_interval_s=2.0, simulator={"seed": 9, "ambient_c": 10.0, "cells_series": 3})
    src = create(parse_source_url("simulator:?seed=3&ambient_c=40&discharge_c_rate=2&discharge_profile=pulse"), base)
    assert (src.settings.seed, src.settings.ambient_c, src.settings.discharge_c_rate) == (3, 40.0, 2.0)
    assert src.settings.discharge_profile == "pulse"
    assert src.settings.cells_series == 3  # kept from the config
    assert src.interval_s == 2.0
    assert src.source_id == "simulator:3"
    named = create_source("sim:bench-7", base)
    assert isinstance(named, SimulatorSource) and named.source_id == "simulator:bench-7"
    assert isinstance(create_source("simulator", SourceSettings()), SimulatorSource)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("bogus=1", "bogus"),
        ("seed=abc", "seed"),
        ("ambient_c=200", "ambient_c"),
        ("discharge_profile=square", "discharge_profile"),
        ("depth_of_discharge=0", "depth_of_discharge"),
        ("noise_voltage_v=nan", "noise_voltage_v"),
    ],
)
def test_invalid_url_options_raise_source_config_error(query: str, named: str) -> None:
    with pytest.raises(SourceConfigError, match=named):
        create(parse_source_url(f"simulator:?{query}"), SourceSettings())


def test_invalid_simulator_name_is_rejected() -> None:
    with pytest.raises(SourceConfigError):
        create(parse_source_url("simulator:bad name"), SourceSettings())
