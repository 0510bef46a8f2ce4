"""Calibration of the hybrid model's EOL band (``eol_band_sigmas``) on validation cells."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent.health.fade_law import CapacityPoint
from device_agent.health.hybrid import HybridModel, Prepared
from ml.data import Cell
from ml.predictions import C0_FIRST, prediction_k, true_eol

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
