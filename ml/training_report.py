"""The training report: model.json's held-out headline figures, training_report.md and .json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agent.health.model_files import ModelFile
from ml.json_files import jsonable, write_json
from ml.metrics import summary_table
from ml.report import plot_history


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The held-out figures that go into model.json (the full metrics.json is in the report)."""
    out: dict[str, Any] = {}
    for ds, d in metrics.get("datasets", {}).items():
        dd: dict[str, Any] = {"cells": d["cells"]}
        for m, mm in d["methods"].items():
            dd[m] = {
                key: {
                    "horizon_rmse_pp": v["horizon_rmse_pp"],
                    "horizon_rmse_pp_clean": v["horizon_rmse_pp_clean"],
                    "one_step_rmse_pp": v["one_step_rmse_pp"],
                    "eol_n": v["eol"]["n_cells"],
                    "eol_missed": v["eol"]["n_missed"],
                    "eol_rel_err_mean": v["eol"]["rel_err_mean"],
                    "eol_rel_err_median_incl_missed": v["eol"]["rel_err_median_incl_missed"],
                    "eol_abs_err_cycles_mean": v["eol"]["abs_err_cycles_mean"],
                }
                for key, v in mm.items()
            }
        out[ds] = dd
    return dict(jsonable(out))


def write_training_report(
    report_dir: Path, mf: ModelFile, metrics: dict[str, Any], history: dict[str, list[float]], total_s: float
) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    if history.get("loss"):
        plot_history(history, report_dir / "loss.png")
    p = mf.provenance
    unscorable = p.unscorable_cells
    band: dict[str, Any] = mf.metrics.get("export", {}).get("eol_band", {})
    lines = [
        f"# battwin hybrid SoH model {mf.version}",
        "",
        f"- data fingerprint: `{p.data_fingerprint}`",
        f"- datasets: {', '.join(p.datasets)}",
        f"- held-out (test) cells: {p.test_cells}",
        f"- validation cells: {p.val_cells}",
        f"- samples: {p.n_train_samples} train, {p.n_val_samples} validation; epochs run: {p.epochs_run}",
        f"- training time: {p.training_time_s:.1f} s (of which data preparation {p.prepare_time_s:.1f} s); "
        f"with evaluation and report: {total_s:.1f} s",
        f"- export: {mf.quantization}, {mf.tflite_bytes} bytes, parity max |dSoH| = {mf.parity_max_abs_soh:.2e}",
        f"- test cells are drawn from scorable cells only (ml.data.scorability); not scorable, so training only: "
        f"{unscorable or 'none'}",
        f"- EOL band: {mf.features.eol_band_sigmas:g} sigma of each cell's scatter ({band.get('source', '-')}"
        f"{'; mean cost per band ' + str(band['mean_cost']) if 'mean_cost' in band else ''})",
        "",
        "## Held-out cells (contract protocol, see metrics.json for every figure)",
        "",
        "```",
        summary_table(metrics) if metrics else "(no held-out cells)",
        "```",
        "",
        "RMSE pp: pooled over every (cell, target row); clean pp: only target rows the offline cleaner labels ok; "
        "cell med: median over cells of each cell's RMSE; wins: held-out cells where the hybrid's RMSE is lower "
        "than that method's; EOL rel: mean relative EOL error over predicted EOLs (misses counted in 'miss'); "
        "rel med: median with a miss counted as infinite.",
        "",
        "Plots: error_vs_horizon_<dataset>.png, trajectories_<dataset>_<n>.png, eol_<dataset>.png, loss.png",
    ]
    (report_dir / "training_report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json({"model": mf.model_dump(mode="json"), "total_time_s": total_s}, report_dir / "training_report.json")
