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

The pieces: :mod:`ml.predictions` (every method's predictions from a point), :mod:`ml.metrics` (the
scores and the summary table), :mod:`ml.eol_band` (calibration of the EOL band), :mod:`ml.report` (plots).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_agent.health.hybrid import HybridModel
from ml.data import Cell
from ml.json_files import write_json
from ml.metrics import compute_metrics
from ml.predictions import predict_cells, write_predictions
from ml.report import plot_evaluation

log = logging.getLogger(__name__)


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
        plot_evaluation(preds, metrics, out_dir)
    return metrics
