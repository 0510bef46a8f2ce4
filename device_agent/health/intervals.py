"""The 80 % central interval of a SoH forecast and the RUL percentiles (numpy only: runs on the device).

Model
-----
Around a method's central trajectory ``soh(h)`` (h = cycles ahead of the last measured one), with
``D(h) = max(log(soh_now / soh(h)), 0)`` the forecast's drop from today in log capacity:

    log soh_lo(h) = log soh_now − D_w(h)·exp(g) − e        log soh_hi(h) = log soh_now − D(h)·exp(−g) + e
    g = k·RATE_SIGMA,  e = k·σ,  k = Z80 · s(h) · sqrt(1 + N_REF / n)

i.e. the fade rate ahead is log-normal around the forecast's (the upper bound fades more slowly, the lower
faster; the upper bound keeps falling, so the late end of life is a number) and one measurement scatters
around the trend by σ:

* σ — the cell's own scatter around its fit: the fade fit's RMS log residual (floored at ``SCATTER_FLOOR``,
  capped at ``SCATTER_CAP``);
* D_w(h) = max(D(h), r·h), r the cell's fade rate: the larger of the rate so far (``log(1/soh_now)`` over
  the history's span) and the recent rate (the last quarter of the history, :func:`recent_fade_rate`): a
  forecast that goes flat while the cell has been fading, or keeps the average rate while the cell fades
  faster of late, does not get a narrow lower bound for it;
* n — the history length (capacities measured): a short history widens the band;
* s(h) — the spread factor per horizon, interpolated linearly in log2(h) and held constant outside the
  horizons it is given at; calibrated on validation cells by the trainer (``ml.eol_band``) so that 80 % of
  the validation targets fall inside, shipped in model.json (:class:`IntervalSpec`), one curve per method.
  Without a calibrated curve (no model, or a model.json from before intervals) ``DEFAULT_SPREAD`` is used.

(For a forecast that rises above today, the same widths are taken around the forecast.) Each bound's
width is made non-decreasing along the trajectory, so the band only widens with the horizon.

RUL percentiles: the cycles ahead at which the lower bound (p10: the early end of life), the central
trajectory (p50) and the upper bound (p90) cross the EOL threshold. Since lo ≤ soh ≤ hi at every cycle,
p10 ≤ p50 ≤ p90. A trajectory cut short before its bound crosses (the device publishes a forecast only a
little past its EOL) is extended at its final log slope up to the forecast horizon; a percentile whose
bound does not cross within the horizon is None (and so is every later one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device_agent.health.fade_law import CapacityPoint, eol_from_trajectory
from device_agent.health.model_files import IntervalSpec

#: the standard normal's 90 % quantile: an 80 % central interval is ± Z80 σ
Z80 = 1.2815515655446004
SCATTER_FLOOR = 0.005
SCATTER_CAP = 0.1
#: history length at which the history factor sqrt(1 + N_REF / n) is sqrt(2)
N_REF = 10.0
#: the log-normal spread of the fade rate ahead at a spread factor of 1 (σ of log rate)
RATE_SIGMA = 0.5
#: the spread factor when none is calibrated
DEFAULT_SPREAD = 1.0


@dataclass(frozen=True, slots=True)
class SpreadCurve:
    """s(h): factors at horizons (cycles ahead), linear in log2(h), constant outside, non-decreasing."""

    horizons: tuple[float, ...]
    factors: tuple[float, ...]

    @staticmethod
    def constant(value: float = DEFAULT_SPREAD) -> SpreadCurve:
        return SpreadCurve((1.0,), (float(value),))

    def at(self, h: np.ndarray) -> np.ndarray:
        hs = np.asarray(self.horizons, dtype=float)
        fs = np.maximum.accumulate(np.asarray(self.factors, dtype=float))
        x = np.log2(np.clip(np.asarray(h, dtype=float), hs[0], hs[-1]))
        return np.asarray(np.interp(x, np.log2(hs), fs))


def spread_for(spec: IntervalSpec | None, method: str) -> SpreadCurve:
    """The spread curve of ``method`` ("hybrid" or "physics") from a model's IntervalSpec, else the default."""
    if spec is None:
        return SpreadCurve.constant()
    factors = spec.hybrid if method == "hybrid" else spec.physics
    return SpreadCurve(tuple(float(h) for h in spec.horizons), tuple(factors))


def model_interval_spec(model: object) -> IntervalSpec | None:
    """The IntervalSpec a loaded health model ships (model.json ``features.intervals``), if any."""
    spec = getattr(model, "spec", None)
    value = getattr(spec, "intervals", None)
    return value if isinstance(value, IntervalSpec) else None


@dataclass(frozen=True, slots=True)
class CellContext:
    """What the device knows of the cell at the forecast: SoH now, its scatter, the history's length and span."""

    soh_now: float
    scatter_log: float
    n_points: int
    span_cycles: float
    #: log capacity lost per cycle recently (see recent_fade_rate); the band uses the larger of the two rates
    recent_rate: float = 0.0

    @property
    def sigma(self) -> float:
        s = self.scatter_log if math.isfinite(self.scatter_log) else SCATTER_CAP
        return float(min(max(s, SCATTER_FLOOR), SCATTER_CAP))

    @property
    def fade_rate(self) -> float:
        """Log capacity lost per cycle over the history so far (≥ 0)."""
        recent = self.recent_rate if math.isfinite(self.recent_rate) else 0.0
        if not (math.isfinite(self.soh_now) and self.soh_now > 0):
            return max(recent, 0.0)
        return max(max(-math.log(self.soh_now), 0.0) / max(self.span_cycles, 1.0), recent, 0.0)

    @property
    def history_factor(self) -> float:
        return math.sqrt(1.0 + N_REF / max(self.n_points, 1))


def recent_fade_rate(cycles: Sequence[float], capacities: Sequence[float], frac: float = 0.25) -> float:
    """Log capacity lost per cycle over the last ``frac`` of the history (at least 9 points): the median of
    the window's first third against the median of its last third (robust to single outliers); 0 if the
    window does not fade or is too short."""
    c = np.asarray(cycles, dtype=float)
    q = np.asarray(capacities, dtype=float)
    ok = np.isfinite(c) & np.isfinite(q) & (q > 0)
    c, q = c[ok], q[ok]
    n = len(c)
    k = max(9, int(frac * n))
    if n < 9:
        return 0.0
    c, y = c[-k:], np.log(q[-k:])
    third = k // 3
    dc = float(np.median(c[-third:]) - np.median(c[:third]))
    if dc <= 0:
        return 0.0
    return max(float(np.median(y[:third]) - np.median(y[-third:])) / dc, 0.0)


def band(ahead: np.ndarray, soh: np.ndarray, ctx: CellContext, spread: SpreadCurve) -> tuple[np.ndarray, np.ndarray]:
    """(soh_lo, soh_hi) of the 80 % interval around ``soh`` at cycles ``ahead`` (ascending); see module doc."""
    s = np.asarray(soh, dtype=float)
    if len(s) == 0:
        return s.copy(), s.copy()
    h = np.maximum(np.asarray(ahead, dtype=float), 0.0)
    k = spread.at(np.maximum(h, 1.0)) * ctx.history_factor * Z80
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.log(max(ctx.soh_now, 1e-6) / np.maximum(s, 1e-6))
    drop = np.maximum(np.nan_to_num(drop, nan=0.0, posinf=0.0, neginf=0.0), 0.0)  # D+(h)
    drop_w = np.maximum(drop, ctx.fade_rate * h)  # never narrower than the fade so far, carried on
    g = k * RATE_SIGMA
    e = k * ctx.sigma
    w_lo = np.maximum.accumulate(drop_w * np.exp(g) - drop + e)
    w_hi = np.maximum.accumulate(drop * (1.0 - np.exp(-g)) + e)
    return s * np.exp(-w_lo), s * np.exp(w_hi)


def extend(cycles: np.ndarray, soh: np.ndarray, until: float, n_new: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory continued at its final log slope (over its last tenth, at least two points) up to
    cycle ``until``; unchanged if it already reaches it. A rising end is continued flat."""
    c = np.asarray(cycles, dtype=float)
    s = np.asarray(soh, dtype=float)
    if len(c) < 2 or c[-1] >= until or not np.all(s > 0):
        return c, s
    j = min(len(c) - 2, int(0.9 * (len(c) - 1)))
    slope = min((math.log(s[-1]) - math.log(s[j])) / max(c[-1] - c[j], 1e-9), 0.0)
    more = np.linspace(c[-1], until, n_new + 1)[1:]
    return np.concatenate([c, more]), np.concatenate([s, s[-1] * np.exp(slope * (more - c[-1]))])


@dataclass(frozen=True, slots=True)
class Interval:
    """The band on the published trajectory and the RUL percentiles (cycles ahead of the last measurement)."""

    soh_lo: list[float]
    soh_hi: list[float]
    rul_p10: float | None
    rul_p50: float | None
    rul_p90: float | None


def forecast_interval(
    cycles: Sequence[float],
    soh: Sequence[float],
    *,
    last_cycle: float,
    ctx: CellContext,
    spread: SpreadCurve,
    threshold: float,
    horizon: float,
) -> Interval:
    """The 80 % band around a forecast trajectory (absolute cycles, ascending) and the RUL percentiles."""
    c = np.asarray(cycles, dtype=float)
    s = np.asarray(soh, dtype=float)
    if ctx.soh_now < threshold:  # already past end of life
        lo, hi = band(c - last_cycle, s, ctx, spread)
        return Interval(lo.tolist(), hi.tolist(), 0.0, 0.0, 0.0)
    ce, se = extend(c, s, last_cycle + horizon)
    lo_e, hi_e = band(ce - last_cycle, se, ctx, spread)
    n = len(c)
    ruls: list[float | None] = []
    for traj in (lo_e, se, hi_e):
        x = eol_from_trajectory(ce, traj, threshold) if len(ce) else None
        ruls.append(max(x - last_cycle, 0.0) if x is not None else None)
    # None only as a suffix (a later bound cannot cross when an earlier one does not), ordered
    for i in (1, 2):
        prev = ruls[i - 1]
        cur = ruls[i]
        if prev is None:
            ruls[i] = None
        elif cur is not None and cur < prev:
            ruls[i] = prev
    return Interval(lo_e[:n].tolist(), hi_e[:n].tolist(), ruls[0], ruls[1], ruls[2])


def health_interval(
    cycles: Sequence[float],
    soh: Sequence[float],
    *,
    soh_now: float,
    params: dict[str, float],
    method: str,
    model: object,
    history: Sequence[CapacityPoint],
    threshold: float,
    horizon: float,
) -> Interval:
    """The interval of a device forecast (the estimator's one call): the scatter from the forecast's fit
    parameters (``interval_scatter_log`` of the hybrid — the plain RMS, where its ``scatter_log``, the EOL band's,
    leaves out failed readings —, ``rmse_log`` of the fade law), the history's length, span and recent fade rate,
    and the spread curve of ``method`` shipped with ``model`` (the default without one)."""
    scatter = params.get("interval_scatter_log", params.get("scatter_log", params.get("rmse_log", math.nan)))
    first = float(history[0].cycle) if history else 0.0
    last = float(history[-1].cycle) if history else 0.0
    recent = recent_fade_rate([p.cycle for p in history], [p.capacity_ah for p in history])
    ctx = CellContext(soh_now, scatter, len(history), last - first, recent)
    return forecast_interval(
        cycles,
        soh,
        last_cycle=last,
        ctx=ctx,
        spread=spread_for(model_interval_spec(model), method),
        threshold=threshold,
        horizon=horizon,
    )
