"""Fade-law fit and the health estimator, on synthetic histories with known answers and on NASA data."""

import csv
import math

import numpy as np
import pytest

from device_agent.config import HealthSettings
from device_agent.health import fade_law
from device_agent.health.estimator import Forecast, HealthEstimator
from device_agent.health.fade_law import CapacityPoint, arrhenius, fit_fade, forecast_eol
from schema.messages import CycleRecord
from tests.support import NASA_CELLS, need_shared_data


def synthetic(c0=2.0, k=2e-4, z=1.2, n=300, noise=0.0, seed=0, temp=25.0):
    rng = np.random.default_rng(seed)
    pts = []
    for cyc in range(1, n + 1):
        c = c0 * math.exp(-k * arrhenius(temp) * cyc**z) * (1 + rng.normal(0, noise))
        pts.append(CapacityPoint(cycle=float(cyc), capacity_ah=c, temperature_c=temp))
    return pts


def true_eol(c0, k, z, thr=0.8, temp=25.0):
    return (-math.log(thr) / (k * arrhenius(temp))) ** (1 / z)


def test_fit_recovers_parameters_without_noise():
    pts = synthetic()
    fit = fit_fade(pts)
    assert fit is not None
    assert fit.c0_ah == pytest.approx(2.0, rel=1e-3)
    assert fit.z == pytest.approx(1.2, abs=0.051)
    assert fit.rmse_log < 1e-3


def test_forecast_from_first_half_predicts_eol():
    c0, k, z = 2.0, 2e-4, 1.2
    eol_true = true_eol(c0, k, z)
    pts = [p for p in synthetic(c0, k, z, n=int(eol_true * 1.3), noise=0.003, seed=2) if p.cycle <= eol_true / 2]
    fit = fit_fade(pts)
    _, _, eol = forecast_eol(fit, c0, 0.8, 5000)
    assert eol is not None
    assert abs(eol - eol_true) / eol_true < 0.10


def test_hotter_cells_age_faster_in_the_law():
    assert arrhenius(45.0) > 2.0 * arrhenius(25.0)
    assert arrhenius(25.0) == pytest.approx(1.0)
    assert arrhenius(0.0) < 0.5
    assert arrhenius(None) == 1.0


def test_outliers_do_not_wreck_the_fit():
    pts = synthetic(noise=0.002, seed=1)
    pts[50] = CapacityPoint(51.0, 0.05)  # failed run
    pts[120] = CapacityPoint(121.0, 2.3)  # regeneration jump
    fit = fit_fade(pts)
    clean = fit_fade(synthetic(noise=0.002, seed=1))
    assert fit.project(np.array([400.0]))[0] == pytest.approx(clean.project(np.array([400.0]))[0], rel=0.02)


def record(index, cap, t=None):
    t = t if t is not None else index * 3600.0
    return CycleRecord(
        index=index,
        kind="discharge",
        start_ts=t,
        end_ts=t + 3000,
        duration_s=3000,
        charge_ah=cap * 1.05,
        energy_wh=cap * 3.6,
        capacity_ah=cap,
        complete=True,
        start_voltage_v=4.2,
        end_voltage_v=2.6,
        min_voltage_v=2.6,
        max_voltage_v=4.2,
        mean_current_a=-2.0,
        mean_temperature_c=25.0,
        n_samples=100,
        source_id="s",
    )


def test_estimator_publishes_soh_and_rul():
    est = HealthEstimator(HealthSettings(), "s")
    pts = synthetic(n=200, noise=0.001)
    healths = []
    for p in pts:
        rec = record(int(p.cycle), p.capacity_ah)
        est.observe(rec)
        h = est.estimate(rec)
        if h:
            healths.append(h)
    last = healths[-1]
    assert last.method == "physics" and last.cycle_index == 200
    assert last.soh == pytest.approx(pts[-1].capacity_ah / 2.0, abs=0.01)
    eol = true_eol(2.0, 2e-4, 1.2)
    assert last.rul_cycles == pytest.approx(eol - 200, rel=0.1)
    assert last.forecast and last.forecast[-1].soh <= 0.8 + 1e-6


class BrokenModel:
    method = "hybrid"
    version = "broken-1"

    def forecast(self, points, c0_ah, eol_threshold, max_cycles) -> Forecast | None:
        raise RuntimeError("interpreter exploded")


def test_a_failing_learned_model_falls_back_to_physics():
    est = HealthEstimator(HealthSettings(), "s", model=BrokenModel())
    for p in synthetic(n=20):
        rec = record(int(p.cycle), p.capacity_ah)
        est.observe(rec)
        h = est.estimate(rec)
    assert h.method == "physics" and "exploded" in est.last_error


def test_partial_discharges_do_not_count_as_capacity():
    est = HealthEstimator(HealthSettings(), "s")
    rec = record(1, 2.0).model_copy(update={"complete": False, "capacity_ah": None})
    assert est.observe(rec) is None and est.points == []
    assert est.discharged_ah == pytest.approx(2.1)


def test_physics_on_a_real_nasa_cell_gives_a_sane_forecast():
    need_shared_data()
    with (NASA_CELLS / "B0055.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["capacity_ah"] and float(r["capacity_ah"]) > 0]
    est = HealthEstimator(HealthSettings(), "B0055")
    for r in rows:
        rec = record(int(r["cycle"]), float(r["capacity_ah"]), t=float(r["elapsed_h"]) * 3600)
        est.observe(rec)
    h = est.estimate(rec)
    assert 0.5 < h.soh < 1.1
    assert h.initial_capacity_ah == pytest.approx(np.median([float(r["capacity_ah"]) for r in rows[:5]]))


def _noisy_linear_fade(seed: int, n_points: int) -> list[CapacityPoint]:
    rng = np.random.default_rng(seed)
    n = np.arange(1, n_points + 1)
    cap = 2.0 * np.exp(-0.003 * n) * (1 + rng.normal(0, 0.01, len(n)))  # linear fade (z = 1), 1 % scatter
    return [CapacityPoint(float(a), float(b)) for a, b in zip(n, cap, strict=True)]


def test_fade_shape_prior_keeps_short_noisy_histories_from_extreme_extrapolation(monkeypatch):
    """15 cycles with 1 % scatter: without the prior on z the fit often picks a 'knee' (z up to 3) that
    fits the noise and extrapolates 30 cycles ahead to a collapse; with it the forecast stays near the truth."""
    truth = 2.0 * math.exp(-0.003 * 45)
    assert fade_law.Z_PRIOR_WEIGHT == 10.0
    errors: dict[float, list[float]] = {0.0: [], 10.0: []}
    shapes: dict[float, list[float]] = {w: [] for w in errors}
    for seed in range(20):
        pts = _noisy_linear_fade(seed, 15)
        for weight, errs in errors.items():
            monkeypatch.setattr(fade_law, "Z_PRIOR_WEIGHT", weight)
            fit = fit_fade(pts)
            assert fit is not None
            errs.append(abs(float(fit.project(np.array([45.0]))[0]) / truth - 1))
            shapes[weight].append(fit.z)
    assert max(shapes[0.0]) >= 2.5  # the failure the prior exists for
    assert max(shapes[10.0]) < 2.0
    assert np.mean(errors[10.0]) < 0.05 < np.mean(errors[0.0])


def test_fade_shape_prior_does_not_override_a_long_history(monkeypatch):
    rng = np.random.default_rng(1)
    n = np.arange(1, 601)
    cap = 2.0 * np.exp(-0.0004 * n**1.5 / math.sqrt(600)) * (1 + rng.normal(0, 0.005, len(n)))  # a knee: z = 1.5
    pts = [CapacityPoint(float(a), float(b)) for a, b in zip(n, cap, strict=True)]
    with_prior = fit_fade(pts)
    monkeypatch.setattr(fade_law, "Z_PRIOR_WEIGHT", 0.0)
    without = fit_fade(pts)
    assert with_prior is not None and without is not None
    assert with_prior.z == without.z == pytest.approx(1.5, abs=0.1)


def test_each_shape_is_fitted_as_if_alone_and_a_rising_history_is_held_flat():
    """fit_fade solves all candidate shapes z in one pass: a shape's fit must not depend on the others in
    the pass, and a negative fade rate is never fitted (a rising history is not extrapolated upwards)."""
    pts = synthetic(noise=0.01, n=120, seed=4)
    axes = fade_law.stress_axes(pts)
    y = np.log([p.capacity_ah for p in pts])
    zs = [0.5, 1.0, 1.5, 2.5]
    together = fade_law._fit_for_zs(axes, y, zs, use_time=False)
    for z, (coef, resid, sse) in zip(zs, together, strict=True):
        ((alone_coef, alone_resid, alone_sse),) = fade_law._fit_for_zs(axes, y, [z], use_time=False)
        np.testing.assert_allclose(coef, alone_coef, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(resid, alone_resid, rtol=1e-9, atol=1e-12)
        assert sse == pytest.approx(alone_sse, rel=1e-9)
    rising = [CapacityPoint(cycle=float(c), capacity_ah=1.8 + 0.002 * c, temperature_c=25.0) for c in range(1, 60)]
    fit = fit_fade(rising)
    assert fit is not None and fit.k_c == 0.0 and fit.k_t == 0.0
    assert fit.project(np.array([200.0]))[0] == pytest.approx(fit.c0_ah)


def test_the_fit_scatter_leaves_out_failed_readings_far_below_the_trend_and_keeps_the_rest():
    """``FadeFit.scatter_log`` (the EOL band's scatter) is the plain RMS on a noisy history, ignores a capacity
    recorded at a fraction of its value (which sets the plain RMS), and keeps a regeneration jump (above)."""
    noisy = synthetic(noise=0.003, seed=2)
    fit = fit_fade(noisy)
    assert fit is not None and fit.scatter_log == pytest.approx(fit.rmse_log, rel=1e-6)
    dipped = list(noisy)
    dipped[250] = CapacityPoint(dipped[250].cycle, 0.6 * dipped[250].capacity_ah, temperature_c=25.0)
    fit_dip = fit_fade(dipped)
    assert fit_dip is not None
    assert fit_dip.rmse_log > 5 * fit.rmse_log  # one failed reading among 300 sets the plain RMS
    assert fit_dip.scatter_log == pytest.approx(fit.rmse_log, rel=0.1)
    jumped = list(noisy)
    jumped[250] = CapacityPoint(jumped[250].cycle, 1.05 * jumped[250].capacity_ah, temperature_c=25.0)
    fit_jump = fit_fade(jumped)
    assert fit_jump is not None and fit_jump.scatter_log == pytest.approx(fit_jump.rmse_log, rel=1e-6)
