"""Calibration on validation cells: the hybrid model's EOL band (``eol_band_sigmas``) and the 80 % forecast
interval's spread factors (``features.intervals``, see device_agent.health.intervals)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent.health.fade_law import CapacityPoint
from device_agent.health.hybrid import HybridModel, Prepared
from device_agent.health.intervals import DEFAULT_SPREAD, SpreadCurve
from device_agent.health.intervals import band as interval_band
from device_agent.health.model_files import IntervalSpec
from ml.data import Cell
from ml.metrics import horizon_bin
from ml.predictions import C0_FIRST, INTERVAL_METHODS, predict_cells, prediction_k, true_eol

EOL_BAND_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
EOL_MISS_COST = 1.0


@dataclass(frozen=True)
class EolPoint:
    """A cell and prediction point with a true end of life after it, and the model's inputs there."""

    cell: Cell
    p: float
    history: list[CapacityPoint]  # the valid rows up to and including the point
    eol_true: float
    c0: float  # the contract's C0 over the rows known at the point
    prep: Prepared


def eol_points(
    cells: Sequence[Cell], model: HybridModel, points: Sequence[float], threshold: float
) -> Iterator[EolPoint]:
    """Every cell and point with a true EOL after it (the evaluation's rule) that the model can forecast from."""
    for cell in cells:
        pts = cell.points()
        n = len(pts)
        if n < 2:
            continue
        caps = np.array([q.capacity_ah for q in pts])
        cycles = np.array([q.cycle for q in pts])
        soh = caps / float(np.median(caps[:C0_FIRST]))
        for p in points:
            k = prediction_k(p, n)
            if k >= n:
                continue
            eol_true = true_eol(soh, cycles, k, threshold)
            if eol_true is None:
                continue
            c0 = float(np.median(caps[: min(C0_FIRST, k)]))
            prep = model.prepare(pts[:k], c0)
            if prep is not None:
                yield EolPoint(cell, p, pts[:k], eol_true, c0, prep)


def calibrate_eol_band(
    cells: Sequence[Cell],
    model: HybridModel,
    points: Sequence[float],
    *,
    threshold: float = 0.8,
    max_cycles: int = 5000,
    grid: Sequence[float] = EOL_BAND_GRID,
) -> tuple[float, dict[str, Any]]:
    """Choose the model's EOL band (``eol_band_sigmas``) on cells it was not trained on (validation).

    For every cell and point with a true EOL after it (the evaluation's rule), the hybrid EOL is computed
    for each band width in ``grid``; the cost of one is min(relative error, 1) (a miss costs 1). Each
    dataset's mean cost counts equally; the smallest band with the lowest cost wins. Returns the band and
    a table of the costs.
    """
    costs: dict[float, dict[str, list[float]]] = {float(k): {} for k in grid}
    for ep in eol_points(cells, model, points, threshold):
        out = model.correction(ep.prep)
        for band, per_ds in costs.items():
            eol = model.forecast_from(ep.prep, out, ep.c0, threshold, max_cycles, band_sigmas=band).eol_cycle
            cost = EOL_MISS_COST if eol is None else min(abs(eol - ep.eol_true) / ep.eol_true, EOL_MISS_COST)
            per_ds.setdefault(ep.cell.dataset, []).append(cost)
    table = {str(band): {ds: float(np.mean(v)) for ds, v in sorted(per.items())} for band, per in costs.items()}
    scored = {band: float(np.mean(list(t.values()))) for band, t in zip(costs, table.values(), strict=True) if t}
    if not scored:
        return 0.0, {"grid": list(grid), "cost": table, "chosen": 0.0, "n_points": 0}
    best = min(scored.values())
    chosen = min(b for b, c in scored.items() if c <= best + 1e-12)
    n_points = sum(len(v) for v in costs[float(grid[0])].values())
    return chosen, {"grid": list(grid), "cost": table, "mean_cost": scored, "chosen": chosen, "n_points": n_points}


#: the horizons (cycles ahead) the interval's spread factor is calibrated at: the evaluation's horizon bins
INTERVAL_HORIZONS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: candidate spread factors (geometric, 0.05 .. 20)
SPREAD_GRID = tuple(round(0.05 * 1.1**i, 4) for i in range(64))
#: a horizon bin with fewer validation rows than this takes the factor of the bin before it
MIN_BIN_ROWS = 20


def calibrate_interval_spread(
    cells: Sequence[Cell],
    model: HybridModel,
    points: Sequence[float],
    *,
    threshold: float = 0.8,
    max_cycles: int = 5000,
    coverage: float = 0.8,
) -> tuple[IntervalSpec, dict[str, Any]]:
    """The 80 % interval's spread factor s(h) per method, on cells the model was not trained on (validation).

    Every method's forecast from every point of every validation cell (the evaluation's protocol,
    :func:`ml.predictions.predict_cells`); for each horizon bin [b, 2b) the smallest factor on
    ``SPREAD_GRID`` whose band holds at least ``coverage`` of the bin's true SoH rows is the factor at b
    (a bin with fewer than ``MIN_BIN_ROWS`` rows takes the calibrated bin before it, or the first calibrated
    one; ``DEFAULT_SPREAD`` if none is); the curve is then made non-decreasing, so the band only widens. The hybrid's
    points that fell back to physics are left out of the hybrid's calibration (the device uses the physics
    factor there). Returns the IntervalSpec and a table of the chosen factors and the rows they rest on.
    """
    preds = predict_cells(cells, model, points, threshold=threshold, max_cycles=max_cycles, progress=False)
    spec_h: dict[str, list[float]] = {}
    table: dict[str, Any] = {"coverage": coverage, "grid": [SPREAD_GRID[0], SPREAD_GRID[-1]], "methods": {}}
    for method in INTERVAL_METHODS:
        use = [
            pp for pp in preds if method in pp.interval_ctx and not (method == "hybrid" and pp.fallback.get("hybrid"))
        ]
        aheads = [pp.target_cycles - pp.at_cycle for pp in use]
        bins = np.concatenate([[horizon_bin(h) for h in a] for a in aheads]) if use else np.zeros(0)
        truth = np.concatenate([pp.soh_true for pp in use]) if use else np.zeros(0)
        # coverage[i, b]: the fraction of bin b's rows inside the band at SPREAD_GRID[i]
        inside = np.zeros((len(SPREAD_GRID), len(truth)), dtype=bool)
        for i, s in enumerate(SPREAD_GRID):
            curve = SpreadCurve.constant(s)
            parts = [
                interval_band(a, pp.pred[method], pp.interval_ctx[method], curve)
                for a, pp in zip(aheads, use, strict=True)
            ]
            if parts:
                lo = np.concatenate([x[0] for x in parts])
                hi = np.concatenate([x[1] for x in parts])
                inside[i] = (truth >= lo) & (truth <= hi)
        found: dict[int, float] = {}
        detail: dict[str, Any] = {}
        for b in INTERVAL_HORIZONS:
            sel = bins == b
            n_rows = int(sel.sum())
            if n_rows < MIN_BIN_ROWS:
                detail[str(b)] = {"n_rows": n_rows, "coverage": None, "source": "nearest calibrated bin"}
                continue
            cov = inside[:, sel].mean(axis=1)
            ok = np.nonzero(cov >= coverage)[0]
            i = int(ok[0]) if len(ok) else len(SPREAD_GRID) - 1
            found[b] = float(SPREAD_GRID[i])
            detail[str(b)] = {"n_rows": n_rows, "coverage": float(cov[i]), "source": "validation"}
        # a bin with too few rows takes the calibrated bin before it (the first calibrated one at the start)
        first = next(iter(found.values()), DEFAULT_SPREAD)
        factors: list[float] = []
        for b in INTERVAL_HORIZONS:
            factors.append(found.get(b, factors[-1] if factors else first))
            detail[str(b)]["factor"] = factors[-1]
        spec_h[method] = [float(x) for x in np.maximum.accumulate(factors)]
        table["methods"][method] = detail
    spec = IntervalSpec(
        horizons=list(INTERVAL_HORIZONS), hybrid=spec_h["hybrid"], physics=spec_h["physics"], coverage=coverage
    )
    table["n_points"] = len(preds)
    return spec, table
