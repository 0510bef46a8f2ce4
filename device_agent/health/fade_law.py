"""The physics fade law, fitted per cell from its own history (numpy only: runs on the device).

Model
-----
    C(N) = C0 · exp(f_d)
    f_d  = −( k_c · X_N^z  +  k_t · X_t )

    X_N = Σ_j A(T_j) · ΔN_j            Arrhenius-weighted cycle count (cycle ageing)
    X_t = Σ_j A(T_j) · Δ√(t_j / 1 day)  Arrhenius-weighted square root of time (calendar ageing)
    A(T) = exp( Ea/R · (1/T_ref − 1/T) ),  Ea = 31.7 kJ/mol, T_ref = 298.15 K

N is the cycle number, t the elapsed time, T the cell temperature of each cycle (ambient when the cell
has no sensor). ``z`` (the shape: < 1 decelerating, > 1 accelerating "knee" fade) is chosen on a grid;
for each ``z`` the parameters ``ln C0, k_c ≥ 0, k_t ≥ 0`` are a non-negative linear least-squares
problem in log space, solved by enumerating active sets (three unknowns). Capacity regeneration jumps
and failed-run outliers are down-weighted by iteratively re-weighted least squares with Huber weights.

The shape has a prior: ``z`` minimises ``n·ln(SSE_z/n) + Z_PRIOR_WEIGHT·(ln z / ln 2)²`` (a Gaussian
log-likelihood plus a log-normal prior on ``z`` centred on linear fade). A long history decides ``z`` by
its data alone; a short, noisy one (a few dozen cycles with regeneration jumps) no longer picks an
extreme ``z`` that fits its noise and extrapolates to a collapse: on NASA's 20 scorable cells the
prior halves the horizon error from the first quarter of each history (13.7 → 9.0 pp RMSE).

Forecast: future cycles are assumed to run at the recent temperature and cycles-per-day of the cell.
End of life is the first cycle at which C/C0_ref falls below the threshold; RUL = EOL − last cycle.

Knees: the history is also tested for accelerating fade (:mod:`device_agent.health.knee`, causal, with a
minimum evidence rule). After a detected knee the projection is never above the post-knee line (linear
in capacity at the recent slope): the forecast does not follow the long slow part of the history past
the knee.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device_agent.health.knee import Knee, detect_knee

EA_J_PER_MOL = 31_700.0
R_J_PER_MOL_K = 8.314462618
T_REF_K = 298.15
Z_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(51))  # 0.5 .. 3.0
#: weight of the prior on the fade shape z (see module doc); 0 = choose z by the residual alone
Z_PRIOR_WEIGHT = 10.0
HUBER_K = 1.5
#: a residual more than this many robust standard deviations (1.4826 × MAD) below the fit is a failed reading:
#: left out of the fit's scatter (:attr:`FadeFit.scatter_log`)
OUTLIER_SIGMAS = 5.0
IRLS_ITERATIONS = 3
MIN_AHEAD_STEPS = 50
FORECAST_POINTS = 2000  # the most points a forecast trajectory has (see forecast_step)


def arrhenius(temperature_c: float | None) -> float:
    """A(T): ageing rate relative to 25 °C. Unknown temperature counts as 25 °C."""
    if temperature_c is None or not math.isfinite(temperature_c):
        return 1.0
    t_k = min(max(temperature_c, -40.0), 90.0) + 273.15
    return math.exp(EA_J_PER_MOL / R_J_PER_MOL_K * (1.0 / T_REF_K - 1.0 / t_k))


@dataclass(frozen=True, slots=True)
class CapacityPoint:
    """One measured capacity of a cell (a lab CSV row or a device discharge)."""

    cycle: float
    capacity_ah: float
    elapsed_h: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True, slots=True)
class StressAxes:
    """Cumulative Arrhenius-weighted stress at each point, plus the recent rates used to extrapolate."""

    x_n: np.ndarray
    x_t: np.ndarray
    a_recent: float
    hours_per_cycle: float | None
    last_cycle: float
    last_hours: float | None


def stress_axes(points: Sequence[CapacityPoint], recent: int = 10) -> StressAxes:
    n = len(points)
    cycles = np.array([p.cycle for p in points], dtype=float)
    a = np.array([arrhenius(p.temperature_c) for p in points], dtype=float)
    d_n = np.diff(cycles, prepend=cycles[0])
    d_n[0] = max(cycles[0], 0.0)
    x_n = np.cumsum(a * np.maximum(d_n, 0.0))
    has_time = all(p.elapsed_h is not None and math.isfinite(p.elapsed_h) for p in points)
    if has_time:
        hours = np.maximum.accumulate(np.array([max(p.elapsed_h or 0.0, 0.0) for p in points]))
        sq = np.sqrt(hours / 24.0)
        d_sq = np.diff(sq, prepend=0.0)
        x_t = np.cumsum(a * d_sq)
        span_c = cycles[-1] - cycles[max(0, n - recent)]
        span_h = hours[-1] - hours[max(0, n - recent)]
        hours_per_cycle = float(span_h / span_c) if span_c > 0 and span_h >= 0 else None
        last_hours: float | None = float(hours[-1])
    else:
        x_t = np.zeros(n)
        hours_per_cycle = None
        last_hours = None
    return StressAxes(
        x_n=x_n,
        x_t=x_t,
        a_recent=float(np.mean(a[-recent:])),
        hours_per_cycle=hours_per_cycle,
        last_cycle=float(cycles[-1]),
        last_hours=last_hours,
    )


@dataclass(frozen=True, slots=True)
class FadeFit:
    ln_c0: float
    k_c: float
    k_t: float
    z: float
    rmse_log: float
    axes: StressAxes
    #: accelerating fade detected in the history (see device_agent.health.knee); None = none
    knee: Knee | None = None
    #: the cell's measurement scatter: the RMS log residual without the points more than ``OUTLIER_SIGMAS``
    #: robust standard deviations below the fit (:func:`robust_scatter`); NaN when not computed
    scatter_log: float = math.nan

    @property
    def c0_ah(self) -> float:
        return math.exp(self.ln_c0)

    def capacity_at(self, x_n: np.ndarray | float, x_t: np.ndarray | float) -> np.ndarray:
        xn = np.maximum(np.asarray(x_n, dtype=float), 0.0)
        return np.asarray(np.exp(self.ln_c0 - self.k_c * xn**self.z - self.k_t * np.asarray(x_t)))

    def fitted(self) -> np.ndarray:
        return self.capacity_at(self.axes.x_n, self.axes.x_t)

    def project(self, future_cycles: np.ndarray) -> np.ndarray:
        """Capacity at absolute cycle numbers beyond the last one, at the recent stress rates; after a
        detected knee, never above the post-knee line (see device_agent.health.knee)."""
        law = self.project_law(future_cycles)
        if self.knee is None:
            return law
        return np.asarray(np.minimum(law, self.knee.project(np.asarray(future_cycles, dtype=float))))

    def project_law(self, future_cycles: np.ndarray) -> np.ndarray:
        """The fade law alone at absolute cycle numbers beyond the last one, at the recent stress rates."""
        ax = self.axes
        d_n = np.maximum(np.asarray(future_cycles, dtype=float) - ax.last_cycle, 0.0)
        x_n = ax.x_n[-1] + ax.a_recent * d_n
        if ax.hours_per_cycle is not None and ax.last_hours is not None:
            hours = ax.last_hours + ax.hours_per_cycle * d_n
            x_t = ax.x_t[-1] + ax.a_recent * (np.sqrt(hours / 24.0) - math.sqrt(ax.last_hours / 24.0))
        else:
            x_t = np.full_like(d_n, ax.x_t[-1] if len(ax.x_t) else 0.0)
        return self.capacity_at(x_n, x_t)

    def params(self) -> dict[str, float]:
        out = {"c0_ah": self.c0_ah, "k_c": self.k_c, "k_t": self.k_t, "z": self.z, "rmse_log": self.rmse_log}
        if self.knee is not None:
            out.update(self.knee.params())
        return out


def _solve_stack(g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Solve the stack of small systems g[i] x = r[i]; a singular one (all weights zero) gives NaNs."""
    try:
        return np.asarray(np.linalg.solve(g, r[:, :, None])[:, :, 0])
    except np.linalg.LinAlgError:  # one by one, so that one singular system does not spoil the others
        out = np.full(r.shape, np.nan)
        for j in range(len(r)):
            with contextlib.suppress(np.linalg.LinAlgError):
                out[j] = np.linalg.solve(g[j], r[j])
        return out


def _nn_lstsq(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares with columns 1.. constrained ≥ 0 (column 0, the intercept, is free), for a
    stack of problems at once: ``design`` (Z, n, m), weights ``w`` (Z, n), one ``y`` (n). Returns the
    coefficients (Z, m) and the weighted errors (Z,).

    Solved on the normal equations (at most 3×3) for every active set; the feasible one with the
    smallest weighted error wins (the unconstrained solution, where feasible, is the optimum).
    """
    m = design.shape[2]
    xw = design * w[:, :, None]
    gram = np.einsum("znm,znk->zmk", design, xw)
    rhs = np.einsum("znm,n->zm", xw, y)
    yy = (w * y) @ y

    def sse_of(c: np.ndarray, g: np.ndarray, r: np.ndarray, y2: np.ndarray) -> np.ndarray:
        return np.asarray(y2 - 2.0 * np.einsum("zm,zm->z", c, r) + np.einsum("zm,zmk,zk->z", c, g, c))

    coef = _solve_stack(gram + 1e-12 * np.eye(m), rhs)
    sse = sse_of(coef, gram, rhs, yy)
    idx = np.nonzero(~np.all(np.isfinite(coef), axis=1) | np.any(coef[:, 1:] < 0, axis=1))[0]
    if len(idx):
        # the constrained problems: every smaller active set (the intercept always in), all problems at once
        best_coef = np.zeros((len(idx), m))
        best_sse = np.full(len(idx), math.inf)
        g_all, r_all = gram[idx], rhs[idx]
        for mask in range((1 << (m - 1)) - 1):
            cols = [0] + [c for c in range(1, m) if mask >> (c - 1) & 1]
            sub = _solve_stack(g_all[:, cols][:, :, cols] + 1e-12 * np.eye(len(cols)), r_all[:, cols])
            c = np.zeros((len(idx), m))
            c[:, cols] = sub
            e = sse_of(c, g_all, r_all, yy[idx])
            better = np.all(np.isfinite(sub), axis=1) & ~np.any(sub[:, 1:] < 0, axis=1) & (e < best_sse)
            best_coef[better], best_sse[better] = c[better], e[better]
        # no feasible set at all (only if even the intercept-only system was singular): zeros, an infinite error
        coef[idx], sse[idx] = best_coef, best_sse
    return coef, sse


def _fit_for_zs(
    axes: StressAxes, y: np.ndarray, zs: Sequence[float], use_time: bool
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The robust fit (IRLS with Huber weights) for each shape z in ``zs``, all z at once:
    (coefficients, residuals, weighted SSE) per z."""
    zv = np.asarray(zs, dtype=float)
    nz, n = len(zv), len(y)
    cols = [np.ones((nz, n)), -(axes.x_n[None, :] ** zv[:, None])]
    if use_time:
        cols.append(np.broadcast_to(-axes.x_t, (nz, n)))
    design = np.stack(cols, axis=2)
    w = np.ones((nz, n))
    coef = np.zeros((nz, design.shape[2]))
    for _ in range(IRLS_ITERATIONS):
        coef, _sse = _nn_lstsq(design, y, w)
        resid = y - np.einsum("znm,zm->zn", design, coef)
        med = np.median(resid, axis=1, keepdims=True)
        scale = 1.4826 * np.median(np.abs(resid - med), axis=1, keepdims=True) + 1e-6
        u = np.abs(resid) / (HUBER_K * scale)
        w = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
    resid = y - np.einsum("znm,zm->zn", design, coef)
    sse = np.sum(w * resid**2, axis=1)
    return [(coef[i], resid[i], float(sse[i])) for i in range(nz)]


def robust_scatter(resid: np.ndarray) -> float:
    """RMS of the residuals without those more than ``OUTLIER_SIGMAS`` robust standard deviations (1.4826 × the
    median absolute deviation about their median) below that median: the scatter of the cell's regular
    measurements. Equal to the plain RMS when no residual is that far below (Gaussian scatter: a chance of 3e-7
    per point); a failed reading (a discharge recorded with a fraction of its capacity) no longer sets it: one
    capacity 40 % low among ~110 points otherwise makes the RMS 0.048 in log capacity, 25 times a simulated
    pack's own scatter. Residuals far *above* the fit (regeneration jumps: a cell does read that high, and
    then decays back) still count: leaving them out too lowered the band on NASA cells and made their EOL
    later (ml/README.md, "Dense histories with failed readings")."""
    r = np.asarray(resid, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return math.nan
    med = float(np.median(r))
    scale = 1.4826 * float(np.median(np.abs(r - med)))
    keep = r - med >= -OUTLIER_SIGMAS * scale if scale > 0 else np.ones(len(r), dtype=bool)
    return float(np.sqrt(np.mean(r[keep] ** 2)))


def _z_score(sse: float, n: int, z: float) -> float:
    """-2 log posterior of the shape z, up to a constant (Gaussian residuals, log-normal prior on z)."""
    return n * math.log(max(sse / n, 1e-12)) + Z_PRIOR_WEIGHT * (math.log(z) / math.log(2.0)) ** 2


def fit_fade(
    points: Sequence[CapacityPoint], z_grid: Sequence[float] = Z_GRID, *, detect_knees: bool = True
) -> FadeFit | None:
    """Fit the fade law to measured capacities (≥ 3 valid points), or None if it cannot be fitted.
    With ``detect_knees`` (the default) the history is also tested for accelerating fade (see knee).

    ``z`` is searched on a coarse grid (every 5th value of ``z_grid``), then refined around the best.
    """
    valid = [p for p in points if math.isfinite(p.capacity_ah) and p.capacity_ah > 0 and math.isfinite(p.cycle)]
    if len(valid) < 3:
        return None
    axes = stress_axes(valid)
    y = np.log(np.array([p.capacity_ah for p in valid]))
    use_time = bool(np.any(axes.x_t > 0))
    grid = list(z_grid)
    n = len(y)
    results: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def fit_all(ks: list[int]) -> None:
        results.update(zip(ks, _fit_for_zs(axes, y, [grid[k] for k in ks], use_time), strict=True))

    def score(k: int) -> float:
        return _z_score(results[k][2], n, grid[k])

    coarse = list(range(0, len(grid), 5))
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    fit_all(coarse)
    k_best = min(coarse, key=score)
    fit_all([k for k in range(max(0, k_best - 4), min(len(grid), k_best + 5)) if k not in results])
    k_best = min(results, key=score)
    coef, resid, _ = results[k_best]
    return FadeFit(
        ln_c0=float(coef[0]),
        k_c=float(coef[1]),
        k_t=float(coef[2]) if use_time else 0.0,
        z=float(grid[k_best]),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        axes=axes,
        knee=detect_knee([p.cycle for p in valid], [p.capacity_ah for p in valid]) if detect_knees else None,
        scatter_log=robust_scatter(resid),
    )


def forecast_step(max_cycles: float) -> float:
    """Spacing of a forecast's cycle grid: every cycle, or coarser so that ``max_cycles`` ahead takes at most
    ``FORECAST_POINTS`` points."""
    return max(1.0, max_cycles / FORECAST_POINTS)


def forecast_eol(
    fit: FadeFit, c0_ref: float, threshold: float, max_cycles: float, step: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Project SoH = C/c0_ref ahead; return (cycles, soh, eol_cycle or None if not reached)."""
    last = fit.axes.last_cycle
    horizon = np.arange(last + step, last + max_cycles + step, step)
    soh = fit.project(horizon) / c0_ref
    below = np.nonzero(soh < threshold)[0]
    if len(below) == 0:
        return horizon, soh, None
    i = int(below[0])
    shown = max(i + 1, MIN_AHEAD_STEPS)  # past end of life the trajectory is still shown a little way ahead
    if i == 0:
        return horizon[:shown], soh[:shown], float(horizon[0])
    # linear interpolation between the last point above and the first below the threshold
    c1, c2, s1, s2 = horizon[i - 1], horizon[i], soh[i - 1], soh[i]
    eol = float(c1 + (s1 - threshold) * (c2 - c1) / (s1 - s2)) if s1 != s2 else float(c2)
    return horizon[:shown], soh[:shown], eol


def eol_from_trajectory(cycles: np.ndarray, soh: np.ndarray, threshold: float) -> float | None:
    """The first cycle at which the trajectory ``soh`` falls below ``threshold`` (interpolated between the
    two points around the crossing), or None if it never does."""
    soh = np.asarray(soh)
    below = np.nonzero(soh < threshold)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(cycles[0])
    c1, c2, s1, s2 = cycles[i - 1], cycles[i], soh[i - 1], soh[i]
    return float(c1 + (s1 - threshold) * (c2 - c1) / (s1 - s2)) if s1 != s2 else float(c2)
