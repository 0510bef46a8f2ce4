"""k-fold cross-validation by whole cells over one dataset's scorable cells.

A single split holds out a handful of a small dataset's cells (NASA has 20 scorable ones); which handful
moves the figures by more than the differences between methods. Cross-validation trains ``k`` models;
model ``i`` never sees fold ``i`` of the chosen dataset, and every scorable cell of that dataset is scored
exactly once, by the model that did not train on it. The other datasets train every fold as in the
shipped model's split (their test cells are left out, unused). Unscorable cells always train.

Writes ``predictions.csv`` and ``metrics.json`` (the evaluation contract, pooled over the folds),
``folds.json`` (which cells each fold held out, each fold's model version and EOL band) and
``eol_rules.json`` (end-of-life rules compared on the same out-of-fold forecasts, see
:mod:`ml.eol_rules`) into OUT_DIR; the
fold models go to ``OUT_DIR/fold-<i>/`` (kept, so every figure can be reproduced with ``ml evaluate``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.health.hybrid import load_hybrid_model
from ml.data import Cell, scorability
from ml.eol_rules import compare_cells, summarise
from ml.json_files import write_json
from ml.metrics import compute_metrics
from ml.predictions import PointPrediction, predict_cells, write_predictions
from ml.splitting import Split, split_cells
from ml.train import train
from ml.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossValResult:
    metrics: dict[str, Any]
    folds: list[dict[str, Any]]
    predictions: list[PointPrediction]
    eol_rules: dict[str, Any]


def fold_splits(cells: Sequence[Cell], dataset: str, k: int, cfg: TrainConfig) -> list[Split]:
    """One split per fold: fold i of ``dataset``'s scorable cells (sorted, dealt round-robin after a seeded
    shuffle) is the test set; validation cells are drawn from the rest as in :func:`split_cells`."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    names = sorted(c.cell for c in cells if c.dataset == dataset and scorability(c).ok)
    if len(names) < k:
        raise ValueError(f"dataset {dataset!r} has {len(names)} scorable cells, fewer than {k} folds")
    rng = random.Random(f"{cfg.seed}:crossval:{dataset}")
    shuffled = list(names)
    rng.shuffle(shuffled)
    folds = [sorted(shuffled[i::k]) for i in range(k)]
    base = split_cells(cells, cfg.test_frac, cfg.val_frac, cfg.seed, test_frac_by_dataset=cfg.test_frac_by_dataset)
    own = [c for c in cells if c.dataset == dataset]
    out: list[Split] = []
    for i, test in enumerate(folds):
        rest = [c for c in own if c.cell not in test]
        inner = split_cells(rest, 0.0, cfg.val_frac, cfg.seed + i)  # validation from the rest, scorable only
        train_part = {ds: list(v) for ds, v in base.train.items() if ds != dataset}
        val_part = {ds: list(v) for ds, v in base.val.items() if ds != dataset}
        train_part[dataset] = inner.train.get(dataset, [])
        val_part[dataset] = inner.val.get(dataset, [])
        out.append(Split(train=train_part, val=val_part, test={dataset: list(test)}))
    return out


def crossval(cells: Sequence[Cell], dataset: str, k: int, cfg: TrainConfig, out_dir: Path) -> CrossValResult:
    if not any(c.dataset == dataset for c in cells):
        raise ValueError(f"no cells of dataset {dataset!r} (datasets are the --cells folder names)")
    out_dir.mkdir(parents=True, exist_ok=True)
    preds: list[PointPrediction] = []
    folds: list[dict[str, Any]] = []
    rule_rows: list[dict[str, Any]] = []
    for i, split in enumerate(fold_splits(cells, dataset, k, cfg)):
        log.info("fold %d/%d: holding out %s", i + 1, k, split.test[dataset])
        fold_dir = out_dir / f"fold-{i}"
        result = train([], fold_dir / "model", cfg, cells=cells, split=split)
        model = load_hybrid_model(fold_dir / "model")
        test = [c for c in cells if c.dataset == dataset and c.cell in split.test[dataset]]
        preds += predict_cells(
            test, model, cfg.eval_points, threshold=cfg.eol_threshold, max_cycles=cfg.max_cycles, progress=False
        )
        rules = compare_cells(test, model, cfg.eval_points, threshold=cfg.eol_threshold, max_cycles=cfg.max_cycles)
        rule_rows += [{**row, "fold": i, "model_eol_band": model.spec.eol_band_sigmas} for row in rules]
        folds.append(
            {
                "fold": i,
                "test_cells": split.test[dataset],
                "val_cells": split.val.get(dataset, []),
                "model_version": result.model_file.version,
                "eol_band_sigmas": model.spec.eol_band_sigmas,
                "epochs_run": result.model_file.provenance.epochs_run,
            }
        )
    metrics = compute_metrics(preds, cfg.eval_points, cfg.eol_threshold)
    metrics["crossval"] = {"dataset": dataset, "folds": folds, "k": k}
    write_predictions(preds, out_dir / "predictions.csv")
    write_json(metrics, out_dir / "metrics.json")
    write_json(folds, out_dir / "folds.json")
    eol_rules = {"dataset": dataset, "rules": summarise(rule_rows, cfg.eval_points), "points": rule_rows}
    write_json(eol_rules, out_dir / "eol_rules.json")
    return CrossValResult(metrics=metrics, folds=folds, predictions=preds, eol_rules=eol_rules)
