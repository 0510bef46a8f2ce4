"""End-of-life rules compared on the same forecasts (``battwin ml crossval`` writes ``eol_rules.json``).

The evaluation's truth (see :mod:`ml.evaluate`) is the first measured capacity after the prediction point
that is below the threshold and stays so in the median of it and the next two. A forecast gives a smooth
trajectory; how to turn it into an EOL cycle is a choice. This module scores the choices side by side,
from the very same model outputs, so that the one the device ships with is compared with its alternatives
on cells the model never saw:

* ``hybrid_band_<k>``: the hybrid forecast lowered by ``k`` × the cell's scatter; ``hybrid_model_band`` is
  the device's own rule (the band in the model's ``model.json``, what ``ml evaluate`` scores as hybrid);
* ``prior_band_<k>``: the fade law alone, anchored at the measured level (the hybrid with trust 1 and no
  offset), lowered the same way;
* ``physics``: the fitted fade law itself (the ``physics`` method of the evaluation);
* ``first_passage_hybrid`` / ``first_passage_prior``: the median first time the evaluation's own rule fires
  if measurements scatter around the trajectory with the cell's scatter (Gaussian, independent per
  measurement, one measurement per median cycle spacing of the history).

Each rule's error is |predicted − true| / true EOL cycle, capped at 1; a rule that predicts no EOL within
``max_cycles`` counts 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from device_agent.health.fade_law import eol_from_trajectory, fit_fade, forecast_eol, forecast_step
from device_agent.health.hybrid import HybridModel, Prepared, eol_scatter
from ml.data import Cell
from ml.eol_band import eol_points

BANDS = (0, 1, 2, 3)
MAX_ROWS = 20_000


def first_passage_eol(
    cycles: np.ndarray, soh: np.ndarray, start: float, spacing: float, scatter: float, threshold: float
) -> float | None:
    """Median cycle at which the sustained-crossing rule first fires, for measurements every ``spacing``
    cycles after ``start`` scattering log-normally (``scatter``) around the trajectory (cycles, soh)."""
    n = int(min((cycles[-1] - start) / spacing, MAX_ROWS))
    if n < 1:
        return None
    rows = start + spacing * np.arange(1, n + 1)
    level = np.interp(rows, cycles, soh)
    z = np.log(threshold / np.maximum(level, 1e-9)) / max(scatter, 1e-4)
    q = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))  # P(a measurement reads below)
    q1 = np.append(q[1:], q[-1])
    q2 = np.append(q[2:], [q[-1]] * min(2, n))[:n]
    fires = q * (1.0 - (1.0 - q1) * (1.0 - q2))  # below, and the median with the next two below too
    survive = np.cumprod(1.0 - fires)
    hit = np.nonzero(survive <= 0.5)[0]
    return float(rows[hit[0]]) if len(hit) else None


def rule_eols(
    model: HybridModel,
    prep: Prepared,
    out: np.ndarray,
    c0: float,
    threshold: float,
    max_cycles: int,
    physics_eol: float | None,
    spacing: float,
) -> dict[str, float | None]:
    step = forecast_step(max_cycles)
    cycles = np.arange(prep.last_cycle + step, prep.last_cycle + max_cycles + step, step)
    hybrid = model.soh_at(prep, out, c0, cycles)
    prior = prep.level_ah * np.exp(prep.base(cycles)) / c0
    scatter = eol_scatter(prep, model.spec)
    rules: dict[str, float | None] = {
        "physics": physics_eol,
        "hybrid_model_band": model.forecast_from(prep, out, c0, threshold, max_cycles).eol_cycle,
    }
    for k in BANDS:
        rules[f"hybrid_band_{k}"] = eol_from_trajectory(cycles, hybrid * math.exp(-k * scatter), threshold)
        rules[f"prior_band_{k}"] = eol_from_trajectory(cycles, prior * math.exp(-k * scatter), threshold)
    rules["first_passage_hybrid"] = first_passage_eol(cycles, hybrid, prep.last_cycle, spacing, scatter, threshold)
    rules["first_passage_prior"] = first_passage_eol(cycles, prior, prep.last_cycle, spacing, scatter, threshold)
    return rules


def compare_cells(
    cells: Sequence[Cell], model: HybridModel, points: Sequence[float], *, threshold: float, max_cycles: int
) -> list[dict[str, Any]]:
    """For every cell and point with a true EOL after it: each rule's predicted EOL."""
    rows: list[dict[str, Any]] = []
    for ep in eol_points(cells, model, points, threshold):
        fit = fit_fade(ep.history)
        phys = None if fit is None else forecast_eol(fit, ep.c0, threshold, max_cycles, forecast_step(max_cycles))[2]
        known = np.array([q.cycle for q in ep.history])
        spacing = max(float(np.median(np.diff(known))), 1e-3) if len(known) > 1 else 1.0
        eols = rule_eols(model, ep.prep, model.correction(ep.prep), ep.c0, threshold, max_cycles, phys, spacing)
        rows.append(
            {
                "dataset": ep.cell.dataset,
                "cell": ep.cell.cell,
                "p": ep.p,
                "at_cycle": float(known[-1]),
                "eol_true": ep.eol_true,
                "eol_pred": eols,
            }
        )
    return rows


def _capped_error(pred: float | None, truth: float) -> float:
    return 1.0 if pred is None else min(abs(pred - truth) / truth, 1.0)


def summarise(rows: Sequence[dict[str, Any]], points: Sequence[float]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per rule and point: the mean capped relative error (None without EOL points), their number, misses."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    rules = sorted({name for r in rows for name in r["eol_pred"]})
    for name in rules:
        out[name] = {}
        for p in points:
            sel = [r for r in rows if r["p"] == p]
            errs = [_capped_error(r["eol_pred"][name], r["eol_true"]) for r in sel]
            out[name][f"p{p:g}"] = {
                "rel_err_mean_capped": float(np.mean(errs)) if errs else None,
                "n": len(errs),
                "n_missed": sum(r["eol_pred"][name] is None for r in sel),
            }
    return out
