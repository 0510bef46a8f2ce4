"""Predictions of every method from a prediction point, by the evaluation protocol (see :mod:`ml.evaluate`).

The rows a method may use, C0 and the true end of life follow the contract stated in ``ml.evaluate``'s
module doc; :func:`write_predictions` writes them as predictions.csv.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device_agent.health.fade_law import fit_fade, forecast_eol, forecast_step
from device_agent.health.hybrid import HybridModel, interval_scatter
from device_agent.health.intervals import (
    CellContext,
    SpreadCurve,
    band,
    model_interval_spec,
    recent_fade_rate,
    spread_for,
)
from ml.data import Cell, scorability
from ml.offline_cleaning import clean_cell

METHODS = ("persistence", "physics", "hybrid")
PRED_COLUMNS = ("dataset", "cell", "method", "at_cycle", "target_cycle", "soh_true", "soh_pred", "soh_lo", "soh_hi")
#: the methods that give an 80 % interval (persistence has no trend to be uncertain about: its columns are empty)
INTERVAL_METHODS = ("physics", "hybrid")
C0_FIRST = 5


@dataclass
class PointPrediction:
    dataset: str
    cell: str
    p: float
    k: int  # 1-based index of the prediction point among the valid rows
    at_cycle: float
    soh_at: float
    target_cycles: np.ndarray
    soh_true: np.ndarray
    target_ok: np.ndarray  # the offline cleaner's verdict on each target row (for the 'clean' score)
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    eol_pred: dict[str, float | None] = field(default_factory=dict)
    #: the 80 % interval (soh_lo, soh_hi) at each target row, for the methods that give one
    interval: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: what each interval was computed from (the cell's scatter, level, history): calibration recomputes bands
    interval_ctx: dict[str, CellContext] = field(default_factory=dict)
    fallback: dict[str, str | None] = field(default_factory=dict)
    #: the hybrid's device-side decision (model.json ``fallback``): why it forecast with the fade law instead
    #: of the network at this point (e.g. "hindcast"), None when the network forecast
    device_fallback: str | None = None
    #: whether the device rule ran its hindcast at this point (whatever it decided)
    device_hindcast: bool = False
    eol_true: float | None = None
    scorable: bool = True  # ml.data.scorability: whether the contract's SoH is a state of health here


def prediction_k(p: float, n_valid: int) -> int:
    return min(max(math.ceil(p * n_valid - 1e-9), 1), n_valid)


def true_eol(soh: np.ndarray, cycles: np.ndarray, k: int, threshold: float) -> float | None:
    """EOL cycle after the k-th valid row (sustained rule, see module doc); None if not scored."""
    n = len(soh)

    def below(i: int) -> bool:
        return float(np.median(soh[i : min(i + 3, n)])) < threshold

    if below(k - 1):
        return None
    for i in range(k, n):
        if soh[i] < threshold and below(i):
            return float(cycles[i])
    return None


def predict_cell_at(
    cell: Cell,
    k: int,
    model: HybridModel | None,
    *,
    p: float = math.nan,
    threshold: float = 0.8,
    max_cycles: int = 5000,
    spread: dict[str, SpreadCurve] | None = None,
) -> PointPrediction | None:
    """All methods' predictions from the k-th valid row (1-based) for every later valid row, with the 80 %
    interval of physics and hybrid (``spread``: the spread curve per method; default: the model's, else the
    device default — see device_agent.health.intervals)."""
    pts = cell.points()
    n = len(pts)
    if n == 0 or k >= n:
        return None
    caps = np.array([q.capacity_ah for q in pts])
    cycles = np.array([q.cycle for q in pts])
    c0 = float(np.median(caps[:C0_FIRST]))  # the truth's C0 (may use rows after the point when k < 5)
    soh = caps / c0
    c0_hist = float(np.median(caps[: min(C0_FIRST, k)]))  # what the predictions may know: the same rule, so far
    hist = pts[:k]
    targets = cycles[k:]
    ok = clean_cell(cell).ok[k:]
    pp = PointPrediction(
        dataset=cell.dataset,
        cell=cell.cell,
        p=p,
        k=k,
        at_cycle=float(cycles[k - 1]),
        soh_at=float(soh[k - 1]),
        target_cycles=targets,
        soh_true=soh[k:],
        target_ok=ok,
        eol_true=true_eol(soh, cycles, k, threshold),
        scorable=scorability(cell).ok,
    )
    last = float(caps[k - 1] / c0_hist)
    pp.pred["persistence"] = np.full(len(targets), last)
    pp.eol_pred["persistence"] = float(cycles[k - 1]) if last < threshold else None
    pp.fallback["persistence"] = None
    fit = fit_fade(hist) if len(hist) >= 3 else None
    spec = model_interval_spec(model)
    curves = spread or {m: spread_for(spec, m) for m in INTERVAL_METHODS}
    span = float(hist[-1].cycle - hist[0].cycle)
    ahead = targets - pp.at_cycle
    recent = recent_fade_rate([q.cycle for q in hist], [q.capacity_ah for q in hist])
    if fit is not None:
        pp.pred["physics"] = fit.project(targets) / c0_hist
        ctx = CellContext(float(fit.fitted()[-1] / c0_hist), fit.rmse_log, len(hist), span, recent)
        pp.interval["physics"] = band(ahead, pp.pred["physics"], ctx, curves["physics"])
        pp.interval_ctx["physics"] = ctx
        pp.eol_pred["physics"] = forecast_eol(fit, c0_hist, threshold, max_cycles, step=forecast_step(max_cycles))[2]
        pp.fallback["physics"] = None
    else:
        pp.pred["physics"] = pp.pred["persistence"]
        pp.eol_pred["physics"] = pp.eol_pred["persistence"]
        pp.fallback["physics"] = "persistence"
    prep = model.prepare(hist, c0_hist) if model is not None else None
    if model is not None and prep is not None:
        r = model.correction(prep)
        pp.pred["hybrid"] = model.soh_at(prep, r, c0_hist, targets)
        ctx = CellContext(prep.level_ah / c0_hist, interval_scatter(prep, model.spec), len(hist), span, recent)
        pp.interval["hybrid"] = band(ahead, pp.pred["hybrid"], ctx, curves["hybrid"])
        pp.interval_ctx["hybrid"] = ctx
        pp.eol_pred["hybrid"] = model.forecast_from(prep, r, c0_hist, threshold, max_cycles).eol_cycle
        pp.fallback["hybrid"] = None
        pp.device_fallback = prep.fallback
        pp.device_hindcast = not math.isnan(prep.hindcast[0])
    else:
        pp.pred["hybrid"] = pp.pred["physics"]
        pp.eol_pred["hybrid"] = pp.eol_pred["physics"]
        pp.fallback["hybrid"] = "physics" if pp.fallback["physics"] is None else "persistence"
        if "physics" in pp.interval:  # the device falls back to physics with the physics spread
            pp.interval["hybrid"] = pp.interval["physics"]
            pp.interval_ctx["hybrid"] = pp.interval_ctx["physics"]
    return pp


def predict_cells(
    cells: Sequence[Cell],
    model: HybridModel | None,
    points: Sequence[float],
    *,
    threshold: float = 0.8,
    max_cycles: int = 5000,
    progress: bool = True,
    spread: dict[str, SpreadCurve] | None = None,
) -> list[PointPrediction]:
    out: list[PointPrediction] = []
    for cell in tqdm(cells, desc="evaluate", unit="cell", leave=False, disable=not progress):
        n = int(cell.valid.sum())
        if n == 0:
            continue
        for p in points:
            pp = predict_cell_at(
                cell, prediction_k(p, n), model, p=p, threshold=threshold, max_cycles=max_cycles, spread=spread
            )
            if pp is not None:
                out.append(pp)
    return out


def _fmt_cycle(c: float) -> str:
    return str(int(c)) if float(c).is_integer() else f"{c:.6g}"


def write_predictions(preds: Sequence[PointPrediction], path: Path) -> int:
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(PRED_COLUMNS)
        for pp in preds:
            for m in METHODS:
                at = _fmt_cycle(pp.at_cycle)
                nan = np.full(len(pp.target_cycles), np.nan)
                lo, hi = pp.interval.get(m, (nan, nan))
                for tc, st, sp, sl, sh in zip(pp.target_cycles, pp.soh_true, pp.pred[m], lo, hi, strict=True):
                    bounds = [f"{sl:.6f}", f"{sh:.6f}"] if math.isfinite(sl) and math.isfinite(sh) else ["", ""]
                    w.writerow([pp.dataset, pp.cell, m, at, _fmt_cycle(tc), f"{st:.6f}", f"{sp:.6f}", *bounds])
                    n += 1
    return n
