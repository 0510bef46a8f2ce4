"""Knees, the shape of the published forecast and the device's fallback to the fade law (issue #15, 4–5 and 2).

* a knee (accelerating fade) is detected from the history up to now only, with a minimum evidence rule:
  not before it happens, not on noise or regeneration jumps; after it the fade law's projection follows
  the post-knee slope instead of the long slow part of the history;
* every trajectory the device publishes is non-increasing, keeps falling wherever the fitted trend falls
  (no plateau) and reaches the end-of-life threshold or the horizon limit — on simulated cells (the pack
  simulator's own ageing, through the estimator) and on lab cells;
* the fallback decision uses only the cell's own past and is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from device_agent.config import HealthSettings
from device_agent.health.estimator import HealthEstimator
from device_agent.health.fade_law import CapacityPoint, fit_fade, forecast_eol
from device_agent.health.forecast_shape import window_spacing
from device_agent.health.hybrid import HybridModel, Prepared, cleaned_history, decide_fallback, load_hybrid_model
from device_agent.health.knee import detect_knee
from device_agent.health.model_files import FallbackSpec, FeatureSpec
from device_agent.health.shipped import SHIPPED_MODEL_DIR
from hardware.simulator.model import PackSimulator
from schema.messages import CycleRecord, Health
from schema.simulator_settings import SimulatorSettings
from tests.support import DATA, need_shared_data

C0 = 2.0


def knee_cell(
    n: int, knee_at: int = 600, before: float = 1e-4, after: float = 8e-4, noise: float = 0.002, seed: int = 0
) -> list[CapacityPoint]:
    """Linear fade at ``before`` per cycle, then at ``after`` from ``knee_at`` (fractions of C0)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(1, n + 1):
        frac = 1.0 - before * min(k, knee_at) - after * max(k - knee_at, 0)
        out.append(CapacityPoint(cycle=float(k), capacity_ah=C0 * frac * (1.0 + noise * rng.standard_normal())))
    return out


def nasa_like_cell(n: int, seed: int) -> list[CapacityPoint]:
    """Linear fade with NASA-like regeneration jumps after rests (+3 %, decaying over ~5 cycles) and noise."""
    rng = np.random.default_rng(seed)
    out, boost = [], 0.0
    for k in range(1, n + 1):
        if k % 25 == 0:
            boost = 0.03
        boost *= 0.8
        frac = 1.0 - 1.5e-3 * k + boost
        out.append(CapacityPoint(cycle=float(k), capacity_ah=C0 * frac * (1.0 + 0.003 * rng.standard_normal())))
    return out


def xy(points: list[CapacityPoint]) -> tuple[list[float], list[float]]:
    return [p.cycle for p in points], [p.capacity_ah for p in points]


# ------------------------------------------------------------------------------------------------ knees


def test_a_knee_is_detected_after_it_happens_and_not_before() -> None:
    cell = knee_cell(900)
    assert detect_knee(*xy(cell[:550])) is None  # the knee (cycle 600) is in the future: nothing to see
    knee = detect_knee(*xy(cell[:800]))
    assert knee is not None
    assert 550 <= knee.onset_cycle <= 800
    # the post-knee slope, as a fraction of the capacity per cycle: 8e-4 of C0 ≈ 9.4e-4 of the current level
    assert -1.3e-3 < knee.slope_per_cycle < -7e-4


@pytest.mark.parametrize("seed", range(5))
def test_noise_regeneration_jumps_and_decelerating_fade_make_no_knee(seed: int) -> None:
    nasa = nasa_like_cell(160, seed)
    rng = np.random.default_rng(100 + seed)
    sqrt_fade = [
        CapacityPoint(float(k), C0 * (1.0 - 0.01 * math.sqrt(k)) * (1.0 + 0.002 * rng.standard_normal()))
        for k in range(1, 800)
    ]
    for cell in (nasa, sqrt_fade, knee_cell(900, after=1e-4, seed=seed)):
        for n in range(20, len(cell) + 1, 7):  # at every point of the history, as the device would see it
            assert detect_knee(*xy(cell[:n])) is None, n


def test_after_a_knee_the_fade_law_follows_the_post_knee_slope() -> None:
    cell = knee_cell(1000)
    hist = cell[:760]
    with_knee = fit_fade(hist)
    without = fit_fade(hist, detect_knees=False)
    assert with_knee is not None and without is not None and with_knee.knee is not None
    ahead = np.arange(761.0, 1001.0)
    truth = np.array([p.capacity_ah for p in cell[760:]])
    err_with = float(np.sqrt(np.mean((with_knee.project(ahead) - truth) ** 2)))
    err_without = float(np.sqrt(np.mean((without.project(ahead) - truth) ** 2)))
    assert err_with < 0.5 * err_without
    # the true end of life (0.8·C0) is at cycle 600 + (0.2 − 0.06)/8e-4 = 775 … at most a few % off
    eol = forecast_eol(with_knee, C0, 0.8, 2000)[2]
    eol_without = forecast_eol(without, C0, 0.8, 2000)[2]
    assert eol is not None and abs(eol - 775) < abs((eol_without or 1e9) - 775)
    assert abs(eol - 775) / 775 < 0.03
    # and the projection never decelerates past the post-knee line
    d = np.diff(with_knee.project(ahead))
    assert np.all(d <= 1e-12)


def test_knees_on_lab_cells_are_found_late_in_mit_fast_charged_cells() -> None:
    """MIT's fast-charged cells fade through a knee late in life: on their full histories the test finds one
    on most; at the first quarter of their histories on (almost) none."""
    need_shared_data()
    from ml.data import read_cells_dir

    cells = read_cells_dir(DATA / "cells" / "mit", limit=30)
    full = quarter = 0
    for c in cells:
        pts = c.points()
        full += detect_knee(*xy(pts)) is not None
        quarter += detect_knee(*xy(pts[: len(pts) // 4])) is not None
    assert full >= 0.6 * len(cells)
    assert quarter <= 0.1 * len(cells)


def test_the_networks_prior_is_knee_aware_only_when_its_model_json_says_so(shipped: HybridModel) -> None:
    """The shipped network was trained on knee-free priors: it keeps getting them. A model trained since
    (``knee_prior`` in its model.json, set by the trainer) gets the knee-aware prior, as the fade law has."""
    from device_agent.health.hybrid import prepare
    from ml.samples import identity_spec

    cell = knee_cell(1000)[:760]
    assert not shipped.spec.knee_prior
    plain = prepare(cell, C0, shipped.spec)
    aware = prepare(cell, C0, shipped.spec.model_copy(update={"knee_prior": True}))
    assert plain is not None and plain.fit is not None and plain.fit.knee is None
    assert aware is not None and aware.fit is not None and aware.fit.knee is not None
    ahead = np.array([900.0])
    assert aware.base(ahead)[0] < plain.base(ahead)[0] - 0.05  # the post-knee slope, not the slow past
    assert identity_spec(20, [1, 2, 4]).knee_prior  # what the trainer writes into a new model.json


# ------------------------------------------------------------------------------------------------ shape


def assert_good_shape(health: Health, eol_threshold: float, max_cycles: float, label: str) -> None:
    """Non-increasing; falling on every step while the fitted trend falls; reaches EOL or the horizon limit."""
    soh = np.array([p.soh for p in health.forecast])
    cyc = np.array([p.cycle for p in health.forecast])
    assert len(soh) >= 2, label
    assert np.all(np.diff(cyc) > 0), label
    assert np.all(np.diff(soh) <= 1e-12), label
    if "trend_slope_log_per_cycle" in health.fit_params:  # the hybrid: the measured recent trend
        falling = health.fit_params["trend_slope_log_per_cycle"] < 0
    else:  # the fade law: falling wherever it has a fade term
        falling = health.fit_params.get("k_c", 0.0) > 0 or health.fit_params.get("k_t", 0.0) > 0
    if falling:
        assert np.all(np.diff(soh) < 0), f"{label}: a plateau in {list(zip(cyc, soh, strict=True))}"
        reaches_eol = soh[-1] <= eol_threshold + 1e-9
        reaches_horizon = cyc[-1] >= health.cycle_index + 0.99 * max_cycles
        assert reaches_eol or reaches_horizon, f"{label}: stops at {cyc[-1]} with SoH {soh[-1]}"


def record(index: int, cap: float, t: float, temp: float | None) -> CycleRecord:
    return CycleRecord(
        index=index,
        kind="discharge",
        start_ts=t,
        end_ts=t + 3000,
        duration_s=3000,
        charge_ah=cap,
        energy_wh=cap * 3.6,
        capacity_ah=cap,
        complete=True,
        start_voltage_v=4.2,
        end_voltage_v=2.7,
        min_voltage_v=2.7,
        max_voltage_v=4.2,
        mean_current_a=-2.0,
        mean_temperature_c=temp,
        n_samples=100,
        source_id="s",
    )


@pytest.fixture(scope="module")
def shipped() -> HybridModel:
    return load_hybrid_model(SHIPPED_MODEL_DIR)


def simulated_capacities(seed: int, ageing: float, ambient_c: float, cycles: int) -> list[tuple[int, float, float]]:
    """(cycle, true capacity, time) at the end of each of ``cycles`` discharges of the pack simulator."""
    sim = PackSimulator(
        SimulatorSettings(
            seed=seed,
            ageing_factor=ageing,
            ambient_c=ambient_c,
            charge_c_rate=1.0,
            rest_after_charge_s=60.0,
            rest_after_discharge_s=60.0,
            checkup_every=1000,
        )
    )
    out: list[tuple[int, float, float]] = []
    last = 0
    while sim.state.cycle_count < cycles:
        s = sim.step(10.0)
        if s.cycle_count != last:
            last = s.cycle_count
            out.append((last, s.full_capacity_ah, s.t_s))
    return out


@pytest.mark.slow  # 60 simulated cycles: ~15 s per case on a loaded 2-core machine
@pytest.mark.parametrize(("seed", "ageing", "ambient"), [(1, 3.0, 25.0), (2, 2.0, 35.0)])
def test_simulated_cells_get_a_forecast_that_never_flattens(
    shipped: HybridModel, seed: int, ageing: float, ambient: float
) -> None:
    settings = HealthSettings()
    rng = np.random.default_rng(seed)
    for model in (shipped, None):
        est = HealthEstimator(settings, "sim", model=model, simulated=True)
        published = 0
        for cycle, cap, t in simulated_capacities(seed, ageing, ambient, 60):
            rec = record(cycle, cap * (1.0 + 0.002 * rng.standard_normal()), t, ambient)
            est.observe(rec)
            health = est.estimate(rec)
            if health is None or not health.forecast or health.soh < settings.eol_threshold:
                continue
            assert_good_shape(health, settings.eol_threshold, settings.forecast_max_cycles, f"{model} @{cycle}")
            published += 1
        assert published >= 40


@pytest.mark.parametrize("dataset", ["nasa", "mit", "xjtu", "tju", "hust"])
def test_lab_cells_get_a_forecast_that_never_flattens(shipped: HybridModel, dataset: str) -> None:
    need_shared_data()
    from ml.data import read_cells_dir

    settings = HealthSettings()
    cells = read_cells_dir(DATA / "cells" / dataset, limit=6)
    checked = 0
    for cell in cells:
        pts = cell.points()
        for frac in (0.25, 0.5, 0.75):
            est = HealthEstimator(settings, cell.cell, model=shipped)
            k = max(3, int(frac * len(pts)))
            est.restore(pts[:k], None, 0.0)
            rec = record(int(pts[k - 1].cycle), pts[k - 1].capacity_ah, 0.0, None)
            health = est.estimate(rec)
            if health is None or not health.forecast or health.soh < settings.eol_threshold:
                continue
            assert health.method == "hybrid"
            assert_good_shape(health, settings.eol_threshold, settings.forecast_max_cycles, f"{cell.cell}@{k}")
            checked += 1
    assert checked >= 6


# ------------------------------------------------------------------------------------------------ fallback


@pytest.fixture(scope="module")
def with_fallback(shipped: HybridModel) -> HybridModel:
    """The shipped network with the fallback turned on (as a model.json with ``fallback.enabled`` would)."""
    spec = shipped.spec.model_copy(update={"fallback": FallbackSpec(enabled=True)})
    model = load_hybrid_model(SHIPPED_MODEL_DIR)
    model.spec = spec
    return model


def test_the_fallback_uses_only_the_past_and_is_deterministic(with_fallback: HybridModel) -> None:
    shipped = with_fallback
    cell = nasa_like_cell(160, 3)
    hist = cleaned_history(cell[:120], shipped.spec)
    calls: list[float] = []

    def run(prep: Prepared) -> np.ndarray:
        calls.append(prep.last_cycle)
        return shipped.correction(prep)

    first = decide_fallback(hist, C0, shipped.spec, run)
    assert calls and max(calls) < hist[-1].cycle  # the hindcast starts in the past
    assert decide_fallback(hist, C0, shipped.spec, run) == first
    # the model's own prepare makes the same decision, and it travels with the prepared inputs
    prep = shipped.prepare(cell[:120], C0)
    assert prep is not None and (prep.fallback, prep.hindcast) == first


def test_a_network_that_hindcasts_worse_than_the_fade_law_falls_back(with_fallback: HybridModel) -> None:
    shipped = with_fallback
    cell = knee_cell(900, knee_at=2000, before=2e-4)  # plain linear fade: the fade law hindcasts it well
    hist = cleaned_history(cell[:400], shipped.spec)

    def wild(
        prep: Prepared,
    ) -> np.ndarray:  # a network that is badly wrong: trust 0 (persistence) and a big positive offset
        k = len(shipped.spec.horizons)
        return np.concatenate([np.full(k, -1.0), np.full(k, 1.0)])

    reason, (err_net, err_law) = decide_fallback(hist, C0, shipped.spec, wild)
    assert reason == "hindcast" and err_net > err_law
    reason, _ = decide_fallback(hist, C0, shipped.spec, lambda prep: np.zeros(2 * len(shipped.spec.horizons)))
    assert reason is None  # the network's output zero is the fade law itself: no worse, no fallback
    # the decision reaches the published forecast: the fade law's trajectory, and it says so
    prep = shipped.prepare(cell[:400], C0)
    assert prep is not None
    fc = shipped.forecast_from(replace(prep, fallback="hindcast"), wild(prep), C0, 0.8, 3000)
    law = shipped.forecast_from(prep, np.zeros(2 * len(shipped.spec.horizons)), C0, 0.8, 3000)
    assert fc.params["fallback_fade_law"] == 1.0
    assert fc.soh == pytest.approx(law.soh) and fc.eol_cycle == pytest.approx(law.eol_cycle)


def test_the_fallback_is_off_unless_model_json_turns_it_on(shipped: HybridModel) -> None:
    """The shipped model.json has the hindcast off for histories measured every cycle (the leave-one-dataset-out
    choice, ml/README.md); then no hindcast is run and the network's forecast is published."""
    assert not shipped.spec.fallback.enabled
    cell = knee_cell(900, knee_at=2000, before=2e-4)
    prep = shipped.prepare(cell[:400], C0)
    assert prep is not None and prep.fallback is None and all(math.isnan(e) for e in prep.hindcast)
    parsed = FeatureSpec.model_validate({**shipped.spec.model_dump(), "fallback": {"enabled": True, "margin": 0.5}})
    assert parsed.fallback.enabled and parsed.fallback.margin == 0.5
    with pytest.raises(ValueError):
        FeatureSpec.model_validate({**shipped.spec.model_dump(), "fallback": {"enabled": True, "margin": -1}})


def test_a_sparse_history_gets_the_hindcast_and_a_dense_one_does_not(shipped: HybridModel) -> None:
    """``max_window_spacing``: the hindcast decides, though ``enabled`` is off, when the network's input window
    spans more cycles per measured point than that (a device measuring capacity on some discharges only);
    a cell measured every cycle keeps the network without a hindcast."""
    spec = shipped.spec.model_copy(update={"fallback": FallbackSpec(enabled=False, max_window_spacing=1.5)})
    cell = knee_cell(900, knee_at=2000, before=2e-4)
    dense = cleaned_history(cell[:400], spec)
    sparse = cleaned_history(cell[:400:3], spec)  # every third cycle measured
    assert window_spacing(dense, spec.window) == 1.0 and window_spacing(sparse, spec.window) == 3.0
    k = len(spec.horizons)

    def wild(prep: Prepared) -> np.ndarray:
        return np.concatenate([np.full(k, -1.0), np.full(k, 1.0)])

    reason, errs = decide_fallback(dense, C0, spec, wild)
    assert reason is None and all(math.isnan(e) for e in errs)  # dense: the hindcast does not even run
    reason, (err_net, err_law) = decide_fallback(sparse, C0, spec, wild)
    assert reason == "sparse_hindcast" and err_net > err_law
    reason, errs = decide_fallback(sparse, C0, spec, lambda prep: np.zeros(2 * k))
    assert reason is None and errs[0] == pytest.approx(errs[1])  # a network as good as the fade law stays
    short = cleaned_history(cell[:45:3], spec)  # 15 points: below min_points, no decision
    reason, errs = decide_fallback(short, C0, spec, wild)
    assert reason is None and all(math.isnan(e) for e in errs)
