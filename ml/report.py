"""Plots (matplotlib, Agg backend) for evaluations and training reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ml.predictions import PointPrediction

log = logging.getLogger(__name__)

COLORS = {"persistence": "tab:gray", "physics": "tab:blue", "hybrid": "tab:red"}
MAX_CELLS_PER_FIGURE = 16


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_horizon(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths = []
    for ds, d in metrics["datasets"].items():
        keys = [k for k in d["methods"]["hybrid"] if k != "all"]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False, sharey=True)
        for ax, key in zip(axes[0], keys, strict=True):
            for m, mm in d["methods"].items():
                by = mm[key]["rmse_by_horizon_pp"]
                xs = [int(b) for b in by]
                ys = [by[b] for b in by]
                ax.plot(xs, ys, "o-", color=COLORS.get(m), label=m)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{ds}, prediction point {key[1:]}")
            ax.set_xlabel("horizon (cycles, bin start)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("SoH RMSE (pp)")
        axes[0][0].legend()
        fig.tight_layout()
        p = out_dir / f"error_vs_horizon_{ds}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_trajectories(preds: Sequence[PointPrediction], out_dir: Path, threshold: float) -> list[Path]:
    """Predicted vs actual SoH per cell (capacity / C0), one panel per cell, every prediction point."""
    plt = _plt()
    paths = []
    for ds in sorted({pp.dataset for pp in preds}):
        cells = sorted({pp.cell for pp in preds if pp.dataset == ds})
        for page in range(0, len(cells), MAX_CELLS_PER_FIGURE):
            chunk = cells[page : page + MAX_CELLS_PER_FIGURE]
            ncol = min(4, len(chunk))
            nrow = (len(chunk) + ncol - 1) // ncol
            fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.0 * nrow), squeeze=False)
            for ax, cell in zip(axes.flat, chunk, strict=False):
                cps = [pp for pp in preds if pp.dataset == ds and pp.cell == cell]
                first = min(cps, key=lambda q: q.k)
                xs = np.concatenate([[first.at_cycle], first.target_cycles])
                ys = np.concatenate([[first.soh_at], first.soh_true])
                ax.plot(xs, ys, ".", color="black", ms=3, label="measured")
                for pp in cps:
                    ax.axvline(pp.at_cycle, color="0.8", lw=0.8)
                    for m in ("persistence", "physics", "hybrid"):
                        ax.plot(
                            pp.target_cycles,
                            pp.pred[m],
                            "-",
                            color=COLORS[m],
                            lw=1.0,
                            label=m if pp is cps[0] else None,
                        )
                ax.axhline(threshold, color="tab:orange", ls=":", lw=0.8)
                lo = float(np.nanpercentile(ys, 2)) if len(ys) else 0.7
                ax.set_ylim(max(min(lo, threshold) - 0.08, 0.0), max(float(np.nanpercentile(ys, 98)), 1.0) + 0.05)
                ax.set_title(cell, fontsize=9)
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[len(chunk) :]:
                ax.axis("off")
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"{ds}: SoH predicted vs measured (vertical lines: prediction points)", fontsize=10)
            fig.tight_layout()
            p = out_dir / f"trajectories_{ds}_{page // MAX_CELLS_PER_FIGURE + 1}.png"
            fig.savefig(p, dpi=100)
            plt.close(fig)
            paths.append(p)
    return paths


def plot_eol(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths = []
    for ds, d in metrics["datasets"].items():
        rows = {m: d["methods"][m]["all"]["eol"]["cells"] for m in d["methods"]}
        if not any(rows.values()):
            continue
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        hi = 1.0
        for m, rs in rows.items():
            pts = [(r["eol_true"], r["eol_pred"]) for r in rs if r["eol_pred"] is not None]
            if pts:
                a = np.array(pts)
                ax.plot(a[:, 0], a[:, 1], "o", color=COLORS.get(m), label=f"{m} ({len(pts)}/{len(rs)})", alpha=0.7)
                hi = max(hi, float(a.max()))
        ax.plot([0, hi], [0, hi], "k:", lw=0.8)
        ax.set_xlabel("true EOL cycle")
        ax.set_ylabel("predicted EOL cycle")
        ax.set_title(f"{ds}: end of life (predicted / scored)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"eol_{ds}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_evaluation(preds: Sequence[PointPrediction], metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    threshold = float(metrics["protocol"]["eol_threshold"])
    return (
        plot_error_vs_horizon(metrics, out_dir)
        + plot_trajectories(preds, out_dir, threshold)
        + plot_eol(metrics, out_dir)
    )


def plot_history(history: dict[str, list[float]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for k, v in history.items():
        ax.plot(range(1, len(v) + 1), v, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked Huber loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
