"""A simulated pack's life before the simulation: the closed-form ageing, a pre-aged pack, the life history."""

from __future__ import annotations

import itertools

import pytest

from hardware.simulator.cell import CellParameters
from hardware.simulator.life import aged_fade, life_history, measure_discharge, measured_fraction
from hardware.simulator.model import PackSimulator
from schema.simulator_settings import SimulatorSettings

QUIET = {"noise_voltage_v": 0.0, "noise_current_a": 0.0, "noise_temperature_c": 0.0}


def test_a_new_pack_is_the_default_and_a_pre_aged_one_starts_where_the_closed_form_says() -> None:
    new = PackSimulator(SimulatorSettings(seed=3))
    assert new.state.full_capacity_ah == new.state.design_capacity_ah == 2.0
    assert new.state.equivalent_full_cycles == 0.0
    settings = SimulatorSettings(seed=3, initial_equivalent_cycles=300.0, initial_age_days=300.0)
    aged = PackSimulator(settings)
    expected = aged_fade(settings, CellParameters(), 300.0, 300.0)
    assert aged.state.full_capacity_ah == pytest.approx(2.0 * expected.fade, rel=1e-12)
    assert 0.80 < expected.fade < 0.92
    assert aged.state.equivalent_full_cycles == pytest.approx(300.0)
    # the aged pack has the grown resistance of its fade (+g per 20 % lost)
    growth = 1.0 + CellParameters().resistance_growth * (1.0 - expected.fade) / 0.2
    assert aged.state.resistance_ohm == pytest.approx(new.state.resistance_ohm * growth, rel=1e-9)


def test_the_closed_form_matches_the_stepwise_model_it_summarises() -> None:
    # ×20 ageing so that 12 cycles fade measurably; the stepwise model also sees its self-heating (a few K at
    # 1C), which the closed form at ambient leaves out: the loss agrees within 20 %
    settings = SimulatorSettings(seed=5, ageing_factor=20.0, checkup_every=1000, **QUIET)
    sim = PackSimulator(settings)
    while sim.state.cycle_count < 12:
        sim.step(10.0)
    st = sim.state
    closed = aged_fade(settings, CellParameters(), st.equivalent_full_cycles, st.t_s / 86_400.0).fade
    loss_model, loss_closed = 1.0 - st.full_capacity_ah / 2.0, 1.0 - closed
    assert loss_model > 0.05
    assert loss_closed == pytest.approx(loss_model, rel=0.2)
    assert loss_closed < loss_model  # the cooler closed form ages slower, never faster


def test_a_pre_aged_pack_keeps_ageing_from_its_state_at_the_same_pace() -> None:
    base = SimulatorSettings(seed=2, checkup_every=1000, **QUIET)
    for efc in (0.0, 600.0):
        sim = PackSimulator(base.model_copy(update={"initial_equivalent_cycles": efc, "initial_age_days": efc}))
        c_start = sim.state.full_capacity_ah
        while sim.state.cycle_count < 3:
            sim.step(10.0)
        lost_per_efc = (c_start - sim.state.full_capacity_ah) / 2.0 / (sim.state.equivalent_full_cycles - efc)
        if efc == 0.0:
            fresh = lost_per_efc
        else:  # the power law: a used cell loses far less per cycle than a new one, and still loses
            assert 0.00005 < lost_per_efc < 0.3 * fresh


def test_the_life_history_at_one_cycle_a_day_paces_like_a_real_cell() -> None:
    settings = SimulatorSettings()  # 25 °C, 1C, full depth, ageing ×1
    life = life_history(settings, cycles=1200, cycles_per_day=1.0)
    true = [p.capacity_ah / 2.0 for p in life.points]
    assert all(b < a for a, b in itertools.pairwise(true))  # never recovers
    eol = next(p.cycle for p in life.points if p.capacity_ah / 2.0 < 0.8)
    assert 600 <= eol <= 1100  # documented: 80 % after ~700 cycles at one a day
    # between cycles 300 and 700: 0.01–0.05 % of capacity per equivalent full cycle
    p300 = min(life.points, key=lambda p: abs(p.cycle - 300))
    p700 = min(life.points, key=lambda p: abs(p.cycle - 700))
    rate = (p300.capacity_ah - p700.capacity_ah) / 2.0 / (p700.equivalent_cycles - p300.equivalent_cycles)
    assert 0.0001 < rate < 0.0005
    # the measured capacities: below the true one by the IR drop at the cut-off, a few per cent at most
    for p in life.points:
        assert 0.95 * p.capacity_ah < p.measured_ah < p.capacity_ah
    # the life ends where a pack pre-aged by it starts
    end = aged_fade(settings, CellParameters(), life.equivalent_cycles, life.age_days).fade
    assert life.points[-1].capacity_ah / 2.0 == pytest.approx(end, abs=0.002)
    assert len(life.points) <= 60 and [p.cycle for p in life.points[:5]] == [1, 2, 3, 4, 5]


def test_half_depth_life_is_measured_on_check_ups_only() -> None:
    settings = SimulatorSettings(depth_of_discharge=0.5, checkup_every=4)
    life = life_history(settings, cycles=40)
    assert [p.cycle for p in life.points] == list(range(1, 41, 4))
    assert {p.c_rate for p in life.points} == {CellParameters().checkup_c_rate}
    assert 40 * 0.5 < life.equivalent_cycles < 40 * 0.5 + 10 * 0.5 + 0.1  # half depth, full-depth check-ups


def test_a_faster_discharge_measures_less_and_runs_warmer() -> None:
    settings = SimulatorSettings(ambient_c=20.0)
    slow, fast = measure_discharge(settings, CellParameters(), 0.5), measure_discharge(settings, CellParameters(), 2.0)
    assert 0.9 < fast.fraction < slow.fraction < 1.0
    assert slow.fraction == measured_fraction(settings, CellParameters(), 0.5)
    # self-heating: I²R grows with the current; the pack ends the discharge warmer than its mean
    assert 20.0 < slow.mean_temperature_c < fast.mean_temperature_c < fast.max_temperature_c < 20.0 + 25.0
    assert fast.mean_temperature_c > 20.0 + 3.0


def test_bad_life_is_refused() -> None:
    with pytest.raises(ValueError, match="cycles must be >= 0"):
        life_history(SimulatorSettings(), cycles=-1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        aged_fade(SimulatorSettings(), CellParameters(), -1.0, 0.0)
    with pytest.raises(ValueError):
        SimulatorSettings(initial_equivalent_cycles=-5.0)
