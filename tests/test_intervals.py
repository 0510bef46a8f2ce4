"""The 80 % forecast interval and the RUL percentiles (device_agent.health.intervals), on the wire and on
the device."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from device_agent.config import HealthSettings
from device_agent.health.estimator import HealthEstimator
from device_agent.health.fade_law import CapacityPoint, arrhenius, eol_from_trajectory, fit_fade
from device_agent.health.intervals import (
    CellContext,
    SpreadCurve,
    band,
    forecast_interval,
    recent_fade_rate,
    spread_for,
)
from device_agent.health.model_files import FeatureSpec, IntervalSpec
from schema.messages import CycleRecord, ForecastPoint, Health


def fading(n: int, *, noise: float = 0.003, seed: int = 0, k: float = 2e-4, z: float = 1.2) -> list[CapacityPoint]:
    rng = np.random.default_rng(seed)
    return [
        CapacityPoint(
            cycle=float(c), capacity_ah=2.0 * math.exp(-k * arrhenius(25.0) * c**z) * (1 + rng.normal(0, noise))
        )
        for c in range(1, n + 1)
    ]


def record(index: int, cap: float) -> CycleRecord:
    t = index * 3600.0
    return CycleRecord(
        index=index, kind="discharge", start_ts=t, end_ts=t + 3000, duration_s=3000, charge_ah=cap,
        energy_wh=cap * 3.6, capacity_ah=cap, complete=True, start_voltage_v=4.2, end_voltage_v=2.6,
        min_voltage_v=2.6, max_voltage_v=4.2, mean_current_a=-2.0, mean_temperature_c=25.0, n_samples=100,
        source_id="s",
    )  # fmt: skip


def physics_context(pts: list[CapacityPoint]) -> tuple[np.ndarray, np.ndarray, CellContext]:
    fit = fit_fade(pts)
    assert fit is not None
    c0 = float(np.median([p.capacity_ah for p in pts[:5]]))
    cycles = np.arange(pts[-1].cycle + 1, pts[-1].cycle + 2001)
    ctx = CellContext(float(fit.fitted()[-1] / c0), fit.rmse_log, len(pts), pts[-1].cycle - pts[0].cycle)
    return cycles, fit.project(cycles) / c0, ctx


def test_band_contains_the_forecast_and_widens_with_the_horizon():
    cycles, soh, ctx = physics_context(fading(150))
    lo, hi = band(cycles - 150, soh, ctx, SpreadCurve.constant())
    assert np.all(lo <= soh) and np.all(soh <= hi)
    width_lo = np.log(soh / lo)  # the lower half-width in log capacity
    assert np.all(np.diff(width_lo) >= -1e-12)
    assert width_lo[-1] > 5 * width_lo[0]  # far out, the band is much wider than one cycle ahead
    # the upper bound never climbs above today's level by more than the cell's scatter
    assert hi.max() <= ctx.soh_now * math.exp(1.2816 * max(ctx.sigma, 0.005)) + 1e-12


def test_a_longer_history_and_a_cleaner_cell_give_a_narrower_band():
    cycles, soh, ctx = physics_context(fading(150))
    h = cycles - 150
    base = np.log(soh / band(h, soh, ctx, SpreadCurve.constant())[0])
    short = CellContext(ctx.soh_now, ctx.scatter_log, 5, ctx.span_cycles)
    noisy = CellContext(ctx.soh_now, 0.05, ctx.n_points, ctx.span_cycles)
    assert np.all(np.log(soh / band(h, soh, short, SpreadCurve.constant())[0]) > base)
    assert np.log(soh / band(h, soh, noisy, SpreadCurve.constant())[0])[0] > base[0]
    # a larger spread factor: a wider band
    assert np.all(np.log(soh / band(h, soh, ctx, SpreadCurve.constant(2.0))[0]) > base)


def test_a_flat_forecast_of_a_fading_cell_still_gets_a_widening_band():
    ctx = CellContext(soh_now=0.9, scatter_log=0.002, n_points=100, span_cycles=100.0)
    h = np.arange(1.0, 501.0)
    lo, _ = band(h, np.full(len(h), 0.9), ctx, SpreadCurve.constant())
    assert lo[-1] < 0.9 * math.exp(-0.3)  # fading 10 % per 100 cycles: 500 cycles ahead is far from sure


def test_a_cell_fading_faster_of_late_gets_a_lower_lower_bound():
    cycles = np.arange(1.0, 201.0)
    steady = np.exp(-0.0005 * cycles)  # 0.05 % per cycle throughout
    knee = np.exp(-0.0005 * cycles - 0.00002 * np.maximum(cycles - 150, 0) ** 2)  # faster over the last 50
    assert recent_fade_rate(cycles, steady) == pytest.approx(0.0005, rel=0.05)
    assert recent_fade_rate(cycles, knee) > 2 * recent_fade_rate(cycles, steady)
    assert recent_fade_rate(cycles, np.ones(200)) == 0.0 and recent_fade_rate(cycles[:5], steady[:5]) == 0.0
    h = np.arange(1.0, 301.0)
    flat = np.full(len(h), float(knee[-1]))  # a forecast that ignores the knee
    ctx = CellContext(float(knee[-1]), 0.002, 200, 199.0)
    with_recent = CellContext(float(knee[-1]), 0.002, 200, 199.0, recent_fade_rate(cycles, knee))
    lo_avg, _ = band(h, flat, ctx, SpreadCurve.constant())
    lo_recent, _ = band(h, flat, with_recent, SpreadCurve.constant())
    assert np.all(lo_recent <= lo_avg) and lo_recent[-1] < lo_avg[-1] - 0.05


def test_spread_curve_interpolates_in_log_horizon_and_never_decreases():
    curve = SpreadCurve((1.0, 4.0, 16.0), (1.0, 3.0, 2.0))
    assert curve.at(np.array([0.5, 1.0, 2.0, 4.0, 16.0, 1000.0])).tolist() == pytest.approx(
        [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    )
    spec = IntervalSpec(horizons=[1, 10], hybrid=[0.5, 0.7], physics=[1.5, 2.0])
    assert spread_for(spec, "physics").factors == (1.5, 2.0)
    assert spread_for(spec, "hybrid").factors == (0.5, 0.7)
    assert spread_for(None, "hybrid").at(np.array([100.0]))[0] == 1.0


def test_rul_percentiles_are_ordered_and_where_the_bounds_cross():
    cycles, soh, ctx = physics_context(fading(150))
    iv = forecast_interval(
        cycles, soh, last_cycle=150.0, ctx=ctx, spread=SpreadCurve.constant(), threshold=0.8, horizon=2000
    )
    assert iv.rul_p10 is not None and iv.rul_p50 is not None and iv.rul_p90 is not None
    assert iv.rul_p10 < iv.rul_p50 < iv.rul_p90
    lo, hi = np.array(iv.soh_lo), np.array(iv.soh_hi)
    assert iv.rul_p10 + 150 == pytest.approx(eol_from_trajectory(cycles, lo, 0.8))  # the lower bound ends life first
    assert iv.rul_p50 + 150 == pytest.approx(eol_from_trajectory(cycles, soh, 0.8))
    assert iv.rul_p90 + 150 == pytest.approx(eol_from_trajectory(cycles, hi, 0.8))


def test_a_trajectory_cut_at_its_eol_is_extended_for_the_late_percentile():
    cycles, soh, ctx = physics_context(fading(150))
    eol = eol_from_trajectory(cycles, soh, 0.8)
    keep = cycles <= eol + 5  # what the device publishes: the forecast only a little past its EOL
    iv = forecast_interval(
        cycles[keep], soh[keep], last_cycle=150.0, ctx=ctx, spread=SpreadCurve.constant(), threshold=0.8, horizon=2000
    )
    assert len(iv.soh_lo) == int(keep.sum())
    assert iv.rul_p90 is not None and iv.rul_p90 + 150 > eol + 5


def test_past_end_of_life_every_percentile_is_zero():
    ctx = CellContext(soh_now=0.75, scatter_log=0.01, n_points=300, span_cycles=300.0)
    cycles = np.arange(301.0, 351.0)
    iv = forecast_interval(
        cycles, np.full(50, 0.74), last_cycle=300.0, ctx=ctx, spread=SpreadCurve.constant(), threshold=0.8,
        horizon=50,
    )  # fmt: skip
    assert (iv.rul_p10, iv.rul_p50, iv.rul_p90) == (0.0, 0.0, 0.0)


def test_the_estimator_publishes_the_band_and_percentiles():
    est = HealthEstimator(HealthSettings(), "s")
    for p in fading(200):
        rec = record(int(p.cycle), p.capacity_ah)
        est.observe(rec)
    h = est.estimate(rec)
    assert h is not None and h.forecast
    assert all(f.soh_lo is not None and f.soh_hi is not None for f in h.forecast)
    assert all(f.soh_lo <= f.soh <= f.soh_hi for f in h.forecast)  # type: ignore[operator]
    assert h.rul_cycles_p10 is not None and h.rul_cycles_p50 is not None and h.rul_cycles_p90 is not None
    assert h.rul_cycles_p10 < h.rul_cycles_p50 < h.rul_cycles_p90
    assert h.rul_cycles is not None and h.rul_cycles_p10 <= h.rul_cycles <= h.rul_cycles_p90
    # the lower bound's crossing among the published points is no later than p10 + a point's spacing
    first_lo = next(f.cycle for f in h.forecast if f.soh_lo is not None and f.soh_lo < 0.8)
    assert first_lo - 200 >= h.rul_cycles_p10 - 1e-6
    # the published message reads back with its new fields
    assert Health.model_validate_json(h.model_dump_json()) == h


def _health(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ts": 1.0, "cycle_index": 3, "equivalent_cycles": 3.0, "capacity_ah": 1.9, "initial_capacity_ah": 2.0,
        "soh": 0.95, "eol_threshold": 0.8, "method": "physics", "model_version": "fade-law-1", "source_id": "s",
    }  # fmt: skip
    return {**base, **kw}


def test_old_health_messages_still_parse():
    old = _health(rul_cycles=120.0, forecast=[{"cycle": 4.0, "soh": 0.94}, {"cycle": 5.0, "soh": 0.93}])
    h = Health.model_validate(old)
    assert h.rul_cycles_p10 is None and h.forecast[0].soh_lo is None and h.forecast[0].soh_hi is None


def test_the_wire_refuses_disordered_intervals_and_percentiles():
    ForecastPoint(cycle=1.0, soh=0.9, soh_lo=0.85, soh_hi=0.92)
    with pytest.raises(ValidationError, match="soh_lo"):
        ForecastPoint(cycle=1.0, soh=0.9, soh_lo=0.91)
    with pytest.raises(ValidationError, match="soh_hi"):
        ForecastPoint(cycle=1.0, soh=0.9, soh_hi=0.89)
    Health.model_validate(_health(rul_cycles_p10=10.0, rul_cycles_p50=20.0, rul_cycles_p90=30.0))
    Health.model_validate(_health(rul_cycles_p10=10.0, rul_cycles_p50=20.0))  # p90 beyond the horizon
    with pytest.raises(ValidationError, match="out of order"):
        Health.model_validate(_health(rul_cycles_p10=30.0, rul_cycles_p50=20.0, rul_cycles_p90=40.0))
    with pytest.raises(ValidationError, match="earlier one is not"):
        Health.model_validate(_health(rul_cycles_p50=20.0, rul_cycles_p90=40.0))
    with pytest.raises(ValidationError):
        Health.model_validate(_health(rul_cycles_p10=-1.0))


def test_model_json_without_intervals_still_loads_and_a_bad_spec_is_refused():
    spec = FeatureSpec(
        window=4, horizons=[1, 2], seq_features=["a"], static_features=["b"], seq_mean=[0.0], seq_std=[1.0],
        static_mean=[0.0], static_std=[1.0], output_scale=1.0,
    )  # fmt: skip
    assert spec.intervals is None
    assert FeatureSpec.model_validate_json(spec.model_dump_json()).intervals is None
    with pytest.raises(ValidationError, match="one value per horizon"):
        IntervalSpec(horizons=[1, 2], hybrid=[1.0], physics=[1.0, 1.0])
