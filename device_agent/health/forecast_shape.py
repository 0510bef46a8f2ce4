"""The shape rule and the fallback of the hybrid model (:mod:`device_agent.health.hybrid`, points 5 and 6 of
its docstring): the forecast never rises and keeps falling where the measured trend falls
(:func:`shape_trajectory`, :func:`shaped_log_rel`), and the fade law replaces the network when the network's
hindcast on the cell's own past is worse (:func:`decide_fallback`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from device_agent.health.fade_law import CapacityPoint, forecast_step
from device_agent.health.hybrid_features import MIN_POINTS, Prepared, log_rel_forecast, prepare_cleaned
from device_agent.health.model_files import FeatureSpec

#: the published forecast falls at least this fraction of the fitted trend's own decline (shape rule)
SHAPE_SLOPE_FRAC = 0.5


def shape_trajectory(prep: Prepared, cycles: np.ndarray, log_rel: np.ndarray) -> np.ndarray:
    """The shape rule on a forecast log(C/level) at increasing absolute ``cycles``: it never rises, and where
    the measured trend falls (``prep.trend_slope`` < 0, the robust slope of the recent cleaned history) it
    falls over every step by at least ``SHAPE_SLOPE_FRAC`` of that slope: the network may slow the decline
    down (a fade that decelerates), never stop it. So no plateau while the measured capacity keeps falling,
    and the trajectory reaches end of life (or the horizon limit)."""
    y = np.asarray(log_rel, dtype=float)
    if len(y) == 0:
        return y
    c = np.asarray(cycles, dtype=float)
    floor = SHAPE_SLOPE_FRAC * min(prep.trend_slope, 0.0) * np.diff(np.concatenate([[prep.last_cycle], c]))
    floor[0] = 0.0
    # y'[i] = min(y[i], y'[i-1] + floor[i])  ⇔  y' − F = running minimum of (y − F), F = cumulative floor
    f_cum = np.cumsum(floor)
    return np.asarray(np.minimum.accumulate(y - f_cum) + f_cum)


def shaped_log_rel(prep: Prepared, out: np.ndarray, spec: FeatureSpec, targets: np.ndarray) -> np.ndarray:
    """log(C/level) at absolute target cycles (any order) after the shape rule, computed on the forecast grid
    (:func:`forecast_step` spacing) joined with the targets, so that it agrees with the published
    trajectory."""
    t = np.asarray(targets, dtype=float)
    if t.size == 0:
        return np.zeros(0)
    h_max = max(float(np.max(t)) - prep.last_cycle, 1.0)
    step = forecast_step(h_max)
    grid = prep.last_cycle + step * np.arange(1, math.ceil(h_max / step) + 1)
    allc = np.unique(np.concatenate([grid, t[t > prep.last_cycle]]))
    y = shape_trajectory(prep, allc, log_rel_forecast(prep, out, spec, allc))
    res = log_rel_forecast(prep, out, spec, t)  # targets at or before the last cycle: unshaped
    ahead = t > prep.last_cycle
    res[ahead] = y[np.searchsorted(allc, t[ahead])]
    return np.asarray(res)


def window_spacing(hist: Sequence[CapacityPoint], window: int) -> float:
    """Cycles per measured point over the network's input window (the last ``window`` cleaned points):
    1 for a cell measured every cycle; 0 with fewer than two points."""
    k = min(window, len(hist))
    if k < 2:
        return 0.0
    return float(hist[-1].cycle - hist[-k].cycle) / (k - 1)


def decide_fallback(
    hist: Sequence[CapacityPoint], c0_ah: float, spec: FeatureSpec, run: Callable[[Prepared], np.ndarray]
) -> tuple[str | None, tuple[float, float]]:
    """Whether the device forecasts with the fade law instead of the network, from what it knows now.

    A hindcast on the cell's own cleaned history: from the point ``m`` cleaned points back (``m`` = the last
    ``hindcast_frac`` of the history, at least ``min_hindcast_points``), both the network (``run``: the
    model's raw output for prepared inputs) and the fade law (the same forecast with the network's output
    zero: trust 1, offset 0) forecast the last ``m`` points; their RMSE in log capacity is compared. The
    fade law is used when the network's is more than ``1 + margin`` times the fade law's. It decides for
    every history when ``enabled``, and for a sparse one when the network's input window spans more than
    ``max_window_spacing`` cycles per point (:func:`window_spacing`; reason ``"sparse_hindcast"``): inputs
    unlike anything the network was trained on (lab cells measured every cycle), as a device that measures
    capacity only on complete discharges has them. Deterministic; no decision (the network) below
    ``min_points`` cleaned points. Returns (reason or None, (rmse network, rmse fade law)).
    """
    fb = spec.fallback
    n = len(hist)
    sparse = fb.max_window_spacing is not None and window_spacing(hist, spec.window) > fb.max_window_spacing
    if not (fb.enabled or sparse) or n < fb.min_points:
        return None, (math.nan, math.nan)
    m = max(fb.min_hindcast_points, round(fb.hindcast_frac * n))
    if n - m < MIN_POINTS:
        return None, (math.nan, math.nan)
    past = prepare_cleaned(hist[: n - m], c0_ah, spec)
    if past is None or past.fit is None:
        return None, (math.nan, math.nan)
    targets = np.array([p.cycle for p in hist[n - m :]], dtype=float)
    truth = np.log(np.array([p.capacity_ah for p in hist[n - m :]], dtype=float) / past.level_ah)
    out = run(past)
    err_net = float(np.sqrt(np.mean((shaped_log_rel(past, out, spec, targets) - truth) ** 2)))
    err_law = float(np.sqrt(np.mean((shaped_log_rel(past, np.zeros_like(out), spec, targets) - truth) ** 2)))
    if not (math.isfinite(err_net) and math.isfinite(err_law)):
        return None, (err_net, err_law)
    if err_net > (1.0 + fb.margin) * err_law:
        return "hindcast" if fb.enabled else "sparse_hindcast", (err_net, err_law)
    return None, (err_net, err_law)
