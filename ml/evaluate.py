"""Offline evaluation of persistence, physics and the hybrid model on any folder of cell CSVs.

Protocol (the project's contract, issue #4):

* valid rows: finite ``capacity_ah`` > 0, in file order; C0 = median capacity of the first 5 valid rows;
  ``soh_true`` = capacity / C0 for every valid row; predictions divide by the same rule applied to the
  rows known at the prediction point (identical to C0 from the 5th valid row on: no peeking before);
* for each point p the prediction point is the k-th valid row, k = ceil(p × number of valid rows);
  predictions use the valid rows up to and including it only, for every later valid row;
* methods: ``persistence`` (the last measured SoH), ``physics`` (the device's fade-law fit, as
  ``PhysicsModel``), ``hybrid`` (the shipped TFLite model through the device runtime). Where a method
  cannot forecast (fewer than 3 usable points) it falls back as the device does: hybrid → physics →
  persistence; fallbacks are counted in metrics.json.

End of life (truth): the first valid row after the prediction point at which SoH is below the threshold
and stays so in the median of it and the next two valid rows (one failed run is not an end of life);
cells already below by that rule at the prediction point, or never below, are not scored for EOL.
Predicted EOL: the first forecast cycle below the threshold (forecast up to ``max_cycles`` ahead), as
the device reports it; a method that predicts none within that range is counted as a miss.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from device_agent.health.fade_law import CapacityPoint, fit_fade, forecast_eol, forecast_step
from device_agent.health.hybrid import HybridModel, Prepared
from ml.data import Cell, clean_cell, scorability

log = logging.getLogger(__name__)

METHODS = ("persistence", "physics", "hybrid")
PRED_COLUMNS = ("dataset", "cell", "method", "at_cycle", "target_cycle", "soh_true", "soh_pred")
HORIZON_BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
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
    fallback: dict[str, str | None] = field(default_factory=dict)
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
) -> PointPrediction | None:
    """All methods' predictions from the k-th valid row (1-based) for every later valid row."""
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
    if fit is not None:
        pp.pred["physics"] = fit.project(targets) / c0_hist
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
        pp.eol_pred["hybrid"] = model.forecast_from(prep, r, c0_hist, threshold, max_cycles).eol_cycle
        pp.fallback["hybrid"] = None
    else:
        pp.pred["hybrid"] = pp.pred["physics"]
        pp.eol_pred["hybrid"] = pp.eol_pred["physics"]
        pp.fallback["hybrid"] = "physics" if pp.fallback["physics"] is None else "persistence"
    return pp


def predict_cells(
    cells: Sequence[Cell],
    model: HybridModel | None,
    points: Sequence[float],
    *,
    threshold: float = 0.8,
    max_cycles: int = 5000,
    progress: bool = True,
) -> list[PointPrediction]:
    out: list[PointPrediction] = []
    for cell in tqdm(cells, desc="evaluate", unit="cell", leave=False, disable=not progress):
        n = int(cell.valid.sum())
        if n == 0:
            continue
        for p in points:
            pp = predict_cell_at(
                cell, prediction_k(p, n), model, p=p, threshold=threshold, max_cycles=max_cycles
            )
            if pp is not None:
                out.append(pp)
    return out


# -- calibration of the EOL band --------------------------------------------------------------------

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
    table = {
        str(band): {ds: float(np.mean(v)) for ds, v in sorted(per.items())} for band, per in costs.items()
    }
    scored = {band: float(np.mean(list(t.values()))) for band, t in zip(costs, table.values(), strict=True) if t}
    if not scored:
        return 0.0, {"grid": list(grid), "cost": table, "chosen": 0.0, "n_points": 0}
    best = min(scored.values())
    chosen = min(b for b, c in scored.items() if c <= best + 1e-12)
    n_points = sum(len(v) for v in costs[float(grid[0])].values())
    return chosen, {"grid": list(grid), "cost": table, "mean_cost": scored, "chosen": chosen, "n_points": n_points}


# -- metrics ----------------------------------------------------------------------------------------


def _rmse(err: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(err**2))) * 100.0 if len(err) else None


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _median(xs: Sequence[float]) -> float | None:
    if not len(xs):
        return None
    v = float(np.median(xs))  # inf when more than half are inf
    return v if math.isfinite(v) else math.inf


def horizon_bin(h: float) -> int:
    """The largest bin edge ≤ h (bins are powers of two)."""
    b = 1
    for e in HORIZON_BINS:
        if h >= e:
            b = e
    return b


def method_metrics(preds: Sequence[PointPrediction], method: str) -> dict[str, Any]:
    errs = [pp.pred[method] - pp.soh_true for pp in preds]
    all_err = np.concatenate(errs) if errs else np.zeros(0)
    clean_err = np.concatenate([e[pp.target_ok] for e, pp in zip(errs, preds, strict=True)]) if errs else np.zeros(0)
    one = np.array([e[0] for e in errs if len(e)])
    per_cell_rows: list[dict[str, Any]] = [
        {"cell": pp.cell, "p": pp.p, "at_cycle": pp.at_cycle, "n": len(e), "rmse_pp": _rmse(e)}
        for pp, e in zip(preds, errs, strict=True)
    ]
    per_cell = [float(r["rmse_pp"]) for r in per_cell_rows if r["rmse_pp"] is not None]
    by_h: dict[int, list[np.ndarray]] = {}
    for pp, e in zip(preds, errs, strict=True):
        hb = np.array([horizon_bin(h) for h in pp.target_cycles - pp.at_cycle])
        for b in np.unique(hb):
            by_h.setdefault(int(b), []).append(e[hb == b])
    eol_rows = []
    for pp in preds:
        if pp.eol_true is None:
            continue
        pred = pp.eol_pred[method]
        row: dict[str, Any] = {
            "cell": pp.cell,
            "p": pp.p,
            "at_cycle": pp.at_cycle,
            "eol_true": pp.eol_true,
            "eol_pred": pred,
        }
        if pred is not None:
            row["abs_err"] = abs(pred - pp.eol_true)
            row["rel_err"] = row["abs_err"] / pp.eol_true
            rul = pp.eol_true - pp.at_cycle
            row["rel_err_rul"] = row["abs_err"] / rul if rul > 0 else None
        eol_rows.append(row)
    hit = [r for r in eol_rows if r["eol_pred"] is not None]
    return {
        "n_cells": len({pp.cell for pp in preds}),
        "n_rows": len(all_err),
        "n_fallback": sum(1 for pp in preds if pp.fallback.get(method)),
        "horizon_rmse_pp": _rmse(all_err),
        "horizon_mae_pp": float(np.mean(np.abs(all_err))) * 100.0 if len(all_err) else None,
        "horizon_rmse_pp_cell_mean": _mean(per_cell),
        "horizon_rmse_pp_cell_median": _median(per_cell),
        "horizon_rmse_pp_clean": _rmse(clean_err),
        "one_step_rmse_pp": _rmse(one),
        "rmse_by_horizon_pp": {str(b): _rmse(np.concatenate(v)) for b, v in sorted(by_h.items())},
        "eol": {
            "n_cells": len(eol_rows),
            "n_predicted": len(hit),
            "n_missed": len(eol_rows) - len(hit),
            "abs_err_cycles_mean": _mean([r["abs_err"] for r in hit]),
            "abs_err_cycles_median": _median([r["abs_err"] for r in hit]),
            "rel_err_mean": _mean([r["rel_err"] for r in hit]),
            "rel_err_max": max((r["rel_err"] for r in hit), default=None),
            # a missed EOL counts as an infinite error here (the mean above is over predicted EOLs only)
            "rel_err_median_incl_missed": _median([r.get("rel_err", math.inf) for r in eol_rows]),
            "rel_err_rul_mean": _mean([r["rel_err_rul"] for r in hit if r.get("rel_err_rul") is not None]),
            "cells": eol_rows,
        },
        "per_cell": per_cell_rows,
    }


def _cell_err(pp: PointPrediction, method: str) -> float:
    return float(np.sqrt(np.mean((pp.pred[method] - pp.soh_true) ** 2)))


def compute_metrics(
    preds: Sequence[PointPrediction], points: Sequence[float], threshold: float
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "protocol": {
            "points": list(points),
            "eol_threshold": threshold,
            "c0": f"truth: median capacity of the first {C0_FIRST} valid rows; predictions: the same rule over "
            "the rows known at the prediction point (differs only when it is among the first 4 valid rows)",
            "units": "SoH errors in percentage points (pp); EOL errors in cycles and as a fraction of the true "
            "EOL cycle (rel_err) and of the true RUL (rel_err_rul)",
            "eol_rule": "truth: first valid row after the point with SoH < threshold whose median with the next "
            "two valid rows is also < threshold; predicted: first forecast cycle below the threshold; "
            "rel_err_mean is over predicted EOLs only (misses in n_missed), rel_err_median_incl_missed counts "
            "a miss as an infinite error",
            "clean": "horizon_rmse_pp_clean scores only target rows the offline cleaner labels ok",
            "pooling": "horizon_rmse_pp pools every (cell, target row); per_cell and horizon_rmse_pp_cell_median "
            "give each cell and point its own RMSE; hybrid_wins counts cells where the hybrid's RMSE is lower",
        },
        "datasets": {},
    }
    for ds in sorted({pp.dataset for pp in preds}):
        dpreds = [pp for pp in preds if pp.dataset == ds]
        out["datasets"][ds] = _dataset_metrics(dpreds, points)
        unscorable = sorted({pp.cell for pp in dpreds if not pp.scorable})
        if unscorable:
            kept = [pp for pp in dpreds if pp.scorable]
            out.setdefault("scorable", {"rule": SCORABLE_RULE, "datasets": {}, "unscorable_cells": {}})
            out["scorable"]["unscorable_cells"][ds] = unscorable
            if kept:
                out["scorable"]["datasets"][ds] = _dataset_metrics(kept, points)
    return out


SCORABLE_RULE = (
    "a cell is scored here if it has >= 20 valid rows and <= 5 % of them have a contract SoH outside "
    "[0.5, 1.2] (ml.data.scorability); the other cells' contract SoH is relative to a C0 from runs under "
    "other conditions or dominated by failed runs. The 'datasets' figures above include every cell."
)


def _dataset_metrics(dpreds: Sequence[PointPrediction], points: Sequence[float]) -> dict[str, Any]:
    d: dict[str, Any] = {"cells": sorted({pp.cell for pp in dpreds}), "methods": {}, "hybrid_wins": {}}
    for m in METHODS:
        mm: dict[str, Any] = {"all": method_metrics(dpreds, m)}
        for p in points:
            mm[f"p{p:g}"] = method_metrics([pp for pp in dpreds if pp.p == p], m)
        d["methods"][m] = mm
    for key in [*(f"p{p:g}" for p in points), "all"]:
        sel = [pp for pp in dpreds if key in ("all", f"p{pp.p:g}")]
        d["hybrid_wins"][key] = {
            f"vs_{base}": {
                "cells_won": sum(1 for pp in sel if _cell_err(pp, "hybrid") < _cell_err(pp, base)),
                "cells_tied": sum(1 for pp in sel if _cell_err(pp, "hybrid") == _cell_err(pp, base)),
                "cells": len(sel),
            }
            for base in ("persistence", "physics")
        }
    return d


# -- files ------------------------------------------------------------------------------------------


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
                for tc, st, sp in zip(pp.target_cycles, pp.soh_true, pp.pred[m], strict=True):
                    w.writerow([pp.dataset, pp.cell, m, at, _fmt_cycle(tc), f"{st:.6f}", f"{sp:.6f}"])
                    n += 1
    return n


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        v = float(x)
        if math.isnan(v):
            return None
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n", encoding="utf-8")


def evaluate(
    cells: Sequence[Cell],
    model: HybridModel | None,
    out_dir: Path,
    *,
    points: Sequence[float] = (0.25, 0.5, 0.75),
    threshold: float = 0.8,
    max_cycles: int = 5000,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict, score and write predictions.csv, metrics.json and plots into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = predict_cells(cells, model, points, threshold=threshold, max_cycles=max_cycles, progress=progress)
    write_predictions(preds, out_dir / "predictions.csv")
    metrics = compute_metrics(preds, points, threshold)
    if model is not None:
        metrics["model"] = {"version": model.version, "dir": str(model.model_dir)}
    write_json(metrics, out_dir / "metrics.json")
    if plots:
        from ml.report import plot_evaluation

        plot_evaluation(preds, metrics, out_dir)
    return metrics


def summary_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of the headline figures (for the CLI and the training report).

    RMSE pp: pooled over every (cell, target row); clean pp: only rows the offline cleaner labels ok;
    cell med: median over cells of each cell's RMSE; wins: cells where the hybrid's RMSE is lower than this
    method's; EOL rel: mean relative EOL error over predicted EOLs (misses in 'miss'); rel med: median
    counting a miss as infinite; EOL |d|: mean absolute EOL error in cycles. A dataset name with a ``*``:
    its scorable cells only (see SCORABLE_RULE), shown where some of its cells are not scorable."""
    lines = [
        f"{'dataset':8s} {'point':6s} {'method':12s} {'RMSE pp':>8s} {'clean pp':>8s} {'cell med':>8s} "
        f"{'wins':>5s} {'1-step':>7s} "
        f"{'EOL n':>5s} {'miss':>4s} {'EOL rel':>8s} {'rel med':>8s} {'EOL |d|':>8s}"
    ]
    sections = [(ds, d) for ds, d in metrics["datasets"].items()]
    sections += [(f"{ds}*", d) for ds, d in metrics.get("scorable", {}).get("datasets", {}).items()]
    for ds, d in sections:
        for key in [k for k in d["methods"]["hybrid"] if k != "all"] + ["all"]:
            for m in METHODS:
                mm = d["methods"][m][key]
                e = mm["eol"]

                def f(v: float | None, spec: str = "8.2f") -> str:
                    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".", 1)[0]))

                wins = ""
                if m != "hybrid":
                    w = d["hybrid_wins"][key][f"vs_{m}"]
                    wins = f"{w['cells_won']}/{w['cells']}"
                lines.append(
                    f"{ds:8s} {key:6s} {m:12s} {f(mm['horizon_rmse_pp'])} {f(mm['horizon_rmse_pp_clean'])} "
                    f"{f(mm['horizon_rmse_pp_cell_median'])} {wins:>5s} "
                    f"{f(mm['one_step_rmse_pp'], '7.2f')} {e['n_cells']:5d} {e['n_missed']:4d} "
                    f"{f(e['rel_err_mean'], '8.3f')} {f(e['rel_err_median_incl_missed'], '8.3f')} "
                    f"{f(e['abs_err_cycles_mean'], '8.1f')}"
                )
    return "\n".join(lines)
