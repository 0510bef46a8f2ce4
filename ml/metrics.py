"""Scores of the predictions (metrics.json) and the plain-text table of the headline figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.predictions import C0_FIRST, METHODS, PointPrediction

HORIZON_BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


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


def interval_metrics(preds: Sequence[PointPrediction], method: str) -> dict[str, Any] | None:
    """Observed coverage of the 80 % interval: the fraction of target rows whose true SoH lies within
    [soh_lo, soh_hi], overall and per horizon bin, and the mean width in pp. None if the method gives none."""
    inside: list[np.ndarray] = []
    width: list[np.ndarray] = []
    by_h: dict[int, list[np.ndarray]] = {}
    for pp in preds:
        if method not in pp.interval:
            continue
        lo, hi = pp.interval[method]
        ok = (pp.soh_true >= lo) & (pp.soh_true <= hi)
        inside.append(ok)
        width.append(hi - lo)
        hb = np.array([horizon_bin(h) for h in pp.target_cycles - pp.at_cycle])
        for b in np.unique(hb):
            by_h.setdefault(int(b), []).append(ok[hb == b])
    if not inside:
        return None
    all_in = np.concatenate(inside)
    if not len(all_in):
        return None
    return {
        "nominal": 0.8,
        "n_rows": len(all_in),
        "n_points": len(inside),
        "coverage": float(np.mean(all_in)),
        "mean_width_pp": float(np.mean(np.concatenate(width))) * 100.0,
        "coverage_by_horizon": {
            str(b): {"coverage": float(np.mean(np.concatenate(v))), "n_rows": int(sum(len(x) for x in v))}
            for b, v in sorted(by_h.items())
        },
    }


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
        "interval_80": interval_metrics(preds, method),
    }


def _cell_err(pp: PointPrediction, method: str) -> float:
    return float(np.sqrt(np.mean((pp.pred[method] - pp.soh_true) ** 2)))


def compute_metrics(preds: Sequence[PointPrediction], points: Sequence[float], threshold: float) -> dict[str, Any]:
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
            "interval_80": "interval_80.coverage: fraction of target rows whose true SoH lies in the method's "
            "80 % central interval [soh_lo, soh_hi] (nominal 0.8), overall and per horizon bin (cycles ahead, "
            "bins are powers of two: the largest edge <= h); null for persistence, which gives no interval",
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
    cov = coverage_table(metrics)
    return "\n".join(lines) + ("\n\n" + cov if cov else "")


def coverage_table(metrics: dict[str, Any]) -> str:
    """Observed coverage of the 80 % interval (all points pooled) per dataset and method, overall and per
    horizon bin (cycles ahead, powers of two), with the mean width in pp; "" if no method gave an interval."""
    bins = [str(b) for b in HORIZON_BINS]
    rows = []
    for ds, d in metrics["datasets"].items():
        for m in METHODS:
            iv = d["methods"][m]["all"].get("interval_80")
            if not iv:
                continue
            by_h = iv["coverage_by_horizon"]
            cells = [f"{by_h[b]['coverage']:5.2f}" if b in by_h else "    -" for b in bins]
            rows.append(f"{ds:8s} {m:8s} {iv['coverage']:5.2f} {iv['mean_width_pp']:6.1f} " + " ".join(cells))
    if not rows:
        return ""
    head = f"{'80% cov':8s} {'method':8s} {'all':>5s} {'wid pp':>6s} " + " ".join(f"{'h' + b:>5s}" for b in bins)
    return "\n".join([head, *rows])
