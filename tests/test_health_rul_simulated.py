"""The remaining life a user reads on a simulated battery (issue #15): close to the simulator's own answer.

A simulated pack's capacity follows the simulator's ageing law (``hardware.simulator.life``: closed form at a
constant stress), so how many cycles it has left until 80 % is known exactly. The pack's past goes through the
device's estimator with the shipped model the way the demo backfills it (``devkit.demo_history``: the first
five discharges, then evenly spaced ones, tagged simulated), and the published RUL must be within
``FACTOR`` of the truth. Before the sparse-input guard (``FallbackSpec.max_window_spacing``) the network,
fed a window of capacities measured every ~2 to ~10 cycles (it was trained only on cells measured every
cycle), forecast a 2.5–8 % capacity drop within 16 cycles and published RUL 2.5 cycles where the simulator
says ~100 (30 °C, 1C, 400 cycles lived).
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from device_agent.config import HealthSettings, TrackerSettings
from device_agent.health.estimator import HealthEstimator
from device_agent.health.hybrid import HybridModel, load_hybrid_model
from device_agent.health.shipped import shipped_model_dir
from device_agent.tracking.cycle_tracker import CycleTracker
from devkit.demo_history import aged_settings, records
from hardware.simulator.cell import CellParameters
from hardware.simulator.life import aged_fade, life_history
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings

#: the published RUL is within this factor of the simulator's remaining cycles to 80 % (either way). The fade
#: law itself is that far off on the fastest-fading pack (25 °C, 2C: its fitted exponent overshoots)
FACTOR = 2.0
START_TS = 1_800_000_000.0


@pytest.fixture(scope="module")
def shipped() -> HybridModel:
    d = shipped_model_dir()
    if d is None:
        pytest.skip("no shipped model in this build")
    try:
        return load_hybrid_model(d)
    except Exception as exc:  # no TFLite runtime here
        pytest.skip(f"shipped model not loadable: {exc}")


def true_remaining(sim: SimulatorSettings, lived: int, threshold: float = 0.8) -> int:
    """Cycles from ``lived`` until the pack's capacity first falls below ``threshold`` × new, continuing
    one cycle a day at the same stress (the simulator's law, integrated cycle by cycle as life_history does)."""
    p = CellParameters()
    efc = 0.0
    full = sim.depth_of_discharge >= 1.0
    for k in range(1, 100_000):
        fade = aged_fade(sim, p, efc, float(k - 1), c_rate=sim.discharge_c_rate).fade
        if fade < threshold:
            return k - lived
        checkup = (k - 1) % sim.checkup_every == 0
        efc += fade if (full or checkup) else sim.depth_of_discharge * fade
    raise AssertionError("the simulated pack never reaches end of life")


def published_health(model: HybridModel, sim: SimulatorSettings, lived: int, max_points: int):
    history = life_history(sim, CellParameters(), lived, 1.0, max_points)
    aged = sim.model_copy(
        update={"initial_equivalent_cycles": history.equivalent_cycles, "initial_age_days": history.age_days}
    )
    est = HealthEstimator(HealthSettings(), "sim-rul", model=model, simulated=True)
    health = None
    for rec in records(history, aged, "sim-rul", START_TS):
        assert rec.simulated
        est.observe(rec)
        health = est.estimate(rec)
    assert health is not None
    return health


HALF_DEPTH = {"depth_of_discharge": 0.5, "checkup_every": 4}  # capacity measured at every 4th (full) discharge
STRESSES = [
    # ambient °C, discharge C-rate, cycles lived, measured discharges kept (60: the demo's backfill), more settings
    pytest.param(30.0, 1.0, 400, 60, {}, id="30C-1C-400cyc-sparse"),
    pytest.param(25.0, 1.0, 300, 60, {}, id="25C-1C-300cyc-sparse"),
    pytest.param(25.0, 2.0, 550, 60, {}, id="25C-2C-550cyc-sparse"),
    pytest.param(45.0, 1.0, 100, 60, {}, id="45C-1C-100cyc-sparse"),
    pytest.param(35.0, 1.5, 200, 60, {}, id="35C-1.5C-200cyc-sparse"),
    pytest.param(20.0, 1.0, 700, 60, {}, id="20C-1C-700cyc-sparse"),
    pytest.param(25.0, 1.0, 50, 60, HALF_DEPTH, id="25C-1C-half-depth-50cyc-13-points"),
    pytest.param(30.0, 1.0, 400, 400, {}, id="30C-1C-400cyc-every-cycle", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("ambient", "c_rate", "lived", "kept", "more"), STRESSES)
def test_published_rul_of_a_slowly_fading_simulated_pack_is_within_a_factor_of_the_truth(
    shipped: HybridModel, ambient: float, c_rate: float, lived: int, kept: int, more: dict[str, float]
) -> None:
    sim = SimulatorSettings(ambient_c=ambient, discharge_c_rate=c_rate, **more)
    truth = true_remaining(sim, lived)
    health = published_health(shipped, sim, lived, kept)
    assert health.simulated
    assert health.soh > 0.8 and truth > 0  # still alive: a remaining life to forecast
    rul = health.rul_cycles
    assert rul is not None and math.isfinite(rul), f"no RUL published (truth {truth} cycles)"
    assert truth / FACTOR <= rul <= truth * FACTOR, (
        f"published RUL {rul:.1f} cycles, simulator {truth} (method {health.method}, "
        f"fallback {health.fit_params.get('fallback_fade_law')})"
    )
    p10, p50, p90 = health.rul_cycles_p10, health.rul_cycles_p50, health.rul_cycles_p90
    assert p10 is not None and p50 is not None and p10 <= p50
    assert p90 is None or p50 <= p90
    assert p10 <= truth, "the early end of the interval is later than the simulator's end of life"


@pytest.mark.slow
def test_a_sparse_history_is_forecast_with_the_fade_law_and_says_so(shipped: HybridModel) -> None:
    """The guard's decision is published (fit_params.fallback_fade_law), and a history measured every cycle
    keeps the network."""
    sim = SimulatorSettings(ambient_c=30.0, discharge_c_rate=1.0)
    sparse = published_health(shipped, sim, 400, 60)
    dense = published_health(shipped, sim, 400, 400)
    assert sparse.method == dense.method == "hybrid"
    assert sparse.fit_params["fallback_fade_law"] == 1.0
    assert dense.fit_params["fallback_fade_law"] == 0.0


def dense_recent_health(model: HybridModel, sim: SimulatorSettings, backfilled: int, live: int, dips: dict[int, float]):
    """The history bms-jbd-1 had in the 10-minute demo: ``backfilled`` cycles lived with the demo's 60 measured
    discharges (``devkit.demo_history``), then ``live`` cycles each measured (the agent's own discharges), a few
    of them recorded at a fraction of their capacity (``dips``: cycle → fraction; a discharge resumed after a
    stalled read, before the cycle tracker refused those)."""
    lived = backfilled + live
    sparse = life_history(sim, CellParameters(), backfilled, 1.0, 60)
    every = life_history(sim, CellParameters(), lived, 1.0, lived)
    points = (*sparse.points, *(p for p in every.points if p.cycle > backfilled))
    history = dataclasses.replace(every, points=points)
    aged = sim.model_copy(
        update={"initial_equivalent_cycles": history.equivalent_cycles, "initial_age_days": history.age_days}
    )
    est = HealthEstimator(HealthSettings(), "sim-rul", model=model, simulated=True)
    recs = records(history, aged, "sim-rul", START_TS)
    for rec in recs:
        f = dips.get(rec.index)
        seen = (
            rec
            if f is None
            else rec.model_copy(update={"capacity_ah": rec.capacity_ah * f, "charge_ah": rec.charge_ah * f})
        )
        assert seen.simulated
        est.observe(seen)
    health = est.estimate(recs[-1])
    assert health is not None
    fade_pp_per_cycle = 100.0 * (points[-live - 1].capacity_ah - points[-1].capacity_ah) / sim.capacity_ah / live
    return health, fade_pp_per_cycle


@pytest.mark.parametrize(
    "dips",
    [
        pytest.param({}, id="dense-recent"),
        pytest.param({430: 0.55, 450: 0.7}, id="dense-recent-two-dips"),
        pytest.param({440: 0.85}, id="dense-recent-one-15pc-dip"),
        pytest.param({438: 0.73, 440: 0.75, 444: 0.6, 456: 0.73}, id="dense-recent-four-dips-one-next-to-last"),
    ],
)
def test_a_healthy_pack_measured_every_cycle_with_a_few_failed_readings_is_not_shown_at_end_of_life(
    shipped: HybridModel, dips: dict[int, float]
) -> None:
    """bms-jbd-1 in the 10-minute demo (30 °C, 1C, SoH 82 %, its last 57 capacities measured every cycle, a few
    dips among them) was published at RUL 2.5 cycles, p10 2. Two causes, both from failed readings kept by the
    cleaning (above ``low_frac`` 0.5): the EOL band (the forecast lowered by 3 × the cell's scatter) took its
    scatter from the fade fit's plain RMS log residual, which two capacities recorded at 55 % and 70 % among ~110
    points lift from 0.0019 to 0.066 (one at 85-90 %: to ~0.01), and 3 × that put SoH 0.82 under 0.8 at the
    first forecast step (2.5 cycles); and several dips in the network's input window made it forecast a drop of
    1-3 % within 1-32 cycles (RUL 10 with the band fixed). Now the cleaning leaves out dips once later
    capacities show them (``cleaning.dip_frac``) and the band's scatter leaves out readings far below the fit
    (``fade_law.robust_scatter``). A dip as the newest capacity, which nothing after it shows yet, is left open
    (ml/README.md: RUL 8.7 until the next discharge)."""
    sim = SimulatorSettings(ambient_c=30.0, discharge_c_rate=1.0)
    backfilled, live = 400, 57
    truth = true_remaining(sim, backfilled + live)
    health, fade = dense_recent_health(shipped, sim, backfilled, live, dips)
    assert health.simulated and health.method == "hybrid"
    assert 0.81 < health.soh < 0.84 and 0.015 <= fade <= 0.04  # the stress: SoH ~82 %, ~0.02 pp/cycle
    rul = health.rul_cycles
    assert rul is not None and truth / FACTOR <= rul <= truth * FACTOR, (
        f"published RUL {rul} cycles, simulator {truth} (band scatter {health.fit_params.get('scatter_log')})"
    )


@pytest.mark.slow
def test_the_demo_bms_with_a_stalling_reader_is_not_shown_at_end_of_life(shipped: HybridModel) -> None:
    """bms-jbd-1 end to end: its backfilled past, then 57 cycles of the simulator read every 10 s through the
    cycle tracker, with the reader stalling now and then for 700 s (at the demo's 1000× time a 0.7 s stall of a
    loaded machine), into the estimator with the shipped model. Before the fixes the discharges resumed after a
    stall became capacities at a fraction of the pack's (5 here, 17–76 % of it) and the published RUL was
    2.5 cycles (p10 2.5), the demo's figure."""
    start = 1_800_000_000.0
    sim, history = aged_settings(SimulatorSettings(ambient_c=30.0, discharge_c_rate=1.0, seed=3, start_ts=start), 400)
    assert history is not None
    est = HealthEstimator(HealthSettings(), "sim-bms", model=shipped, simulated=True)
    for rec in records(history, sim, "sim-bms", start):
        est.observe(rec)
    source = SimulatorSource(sim, interval_s=10.0, name="bms")
    source.open()
    tracker = CycleTracker(
        TrackerSettings(cells_series=sim.cells_series, cutoff_voltage_per_cell_v=sim.discharge_cutoff_per_cell_v),
        "sim-bms",
        simulated=True,
        first_cycle=400,
    )
    rng = random.Random(1)
    live: list[float] = []
    health = None
    for _ in range(200_000):
        if tracker.cycle >= 457:
            break
        sample = source.poll()
        if rng.random() < 0.0005:  # the reader stalls: the next 70 samples (700 s) are never read
            for _ in range(70):
                source.poll()
        for rec in tracker.push(sample):
            if est.observe(rec) is not None:
                assert rec.capacity_ah is not None
                live.append(rec.capacity_ah)
                health = est.estimate(rec)
    assert tracker.gaps_seen > 10 and len(live) > 30
    assert min(live) > 0.95 * max(live), "a discharge resumed after a stall was recorded as a capacity"
    assert health is not None and health.simulated and 0.81 < health.soh < 0.84
    # at one cycle a day the pack has 49 cycles left; run back to back (less calendar ageing) it has more
    truth_floor = true_remaining(SimulatorSettings(ambient_c=30.0, discharge_c_rate=1.0), 457)
    assert health.rul_cycles is not None and health.rul_cycles >= truth_floor / FACTOR
    assert health.rul_cycles_p10 is not None and health.rul_cycles_p10 >= 10.0
