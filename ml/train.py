"""Train the hybrid model: read cells, split by cells, build samples, fit the LSTM, export, evaluate.

Everything is deterministic for a given seed and data (Python, numpy and TensorFlow seeds, TensorFlow op
determinism, cells sorted by name). The export is checked: TFLite against Keras on validation windows
(parity), then the exported files are loaded by the device runtime and evaluated on the held-out cells.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_agent.health.hybrid import HybridModel, load_hybrid_model
from device_agent.health.model_files import (
    MODEL_JSON,
    MODEL_TFLITE,
    FeatureSpec,
    ModelFile,
    Provenance,
    TensorSpec,
    sha256_file,
    write_model_file,
)
from ml.data import Cell, read_cells_dir, unscorable_cells
from ml.eol_band import calibrate_eol_band, calibrate_interval_spread
from ml.evaluate import evaluate
from ml.export import KERAS_FILE, export_model
from ml.fit import fit_keras, normalisation_stats
from ml.samples import build_samples, identity_spec
from ml.splitting import Split, fingerprint, split_cells
from ml.train_config import TrainConfig
from ml.training_report import headline_metrics, write_training_report

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: Path
    model_file: ModelFile
    metrics: dict[str, Any]
    report_dir: Path | None


def read_training_cells(dirs: Sequence[Path], max_cells: int | None = None) -> list[Cell]:
    """Cells of every folder (dataset = folder name). A folder's name must be unique among the folders."""
    cells: list[Cell] = []
    seen: set[str] = set()
    for d in dirs:
        name = Path(d).resolve().name
        if name in seen:
            raise ValueError(f"two --cells folders are both named {name!r}: dataset names must be unique")
        seen.add(name)
        cells.extend(read_cells_dir(Path(d), limit=max_cells))
    return cells


def _eol_band(cfg: TrainConfig, model: HybridModel, val_cells: Sequence[Cell]) -> tuple[float, dict[str, Any]]:
    """The EOL band: fixed by the config, or calibrated on the validation cells (never the test cells)."""
    if cfg.eol_band_sigmas is not None:
        return cfg.eol_band_sigmas, {"chosen": cfg.eol_band_sigmas, "source": "config"}
    band, table = calibrate_eol_band(
        val_cells, model, cfg.eval_points, threshold=cfg.eol_threshold, max_cycles=cfg.max_cycles
    )
    log.info("EOL band calibrated on %d validation points: %.1f sigma", table["n_points"], band)
    return band, {**table, "source": "validation cells"}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("tensorflow", "keras", "numpy", "ai_edge_litert"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            continue
    return out


def model_version(fp: str, tflite_sha: str, spec: FeatureSpec | None = None) -> str:
    """``hybrid-1-<data fingerprint>-<tflite sha>[-<device rules>]``: the last part hashes the feature spec the
    device forecasts with (EOL band, intervals, fallback rules), so that a model.json whose rules change while the
    network stays the same is a new version on the device, in Health messages and in the fleet's records."""
    version = f"hybrid-1-{fp[:8]}-{tflite_sha[:8]}"
    if spec is None:
        return version
    rules = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{version}-{hashlib.sha256(rules.encode()).hexdigest()[:6]}"


def train(
    cell_dirs: Sequence[Path],
    out_dir: Path,
    cfg: TrainConfig,
    *,
    report_dir: Path | None = None,
    cells: Sequence[Cell] | None = None,
    split: Split | None = None,
) -> TrainResult:
    """Train, export and evaluate; model.tflite + model.json go to out_dir, the report to report_dir.
    ``split`` replaces the config's split (cross-validation); cells in none of its parts are not used."""
    t_start = time.perf_counter()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    all_cells = list(cells) if cells is not None else read_training_cells(cell_dirs, cfg.max_cells_per_dataset)
    if not all_cells:
        raise ValueError("no cells to train on")
    if split is None:
        split = split_cells(
            all_cells, cfg.test_frac, cfg.val_frac, cfg.seed, test_frac_by_dataset=cfg.test_frac_by_dataset
        )
    role = {(c.dataset, c.cell): split.role(c.dataset, c.cell) for c in all_cells}
    train_cells = [c for c in all_cells if role[(c.dataset, c.cell)] == "train"]
    val_cells = [c for c in all_cells if role[(c.dataset, c.cell)] == "val"]
    test_cells = [c for c in all_cells if role[(c.dataset, c.cell)] == "test"]
    fp = fingerprint(all_cells, split)
    log.info("split by cells: %d train, %d validation, %d test", len(train_cells), len(val_cells), len(test_cells))

    spec0 = identity_spec(cfg.window, cfg.horizons)
    jobs = cfg.jobs or min(2, os.cpu_count() or 1)
    train_s = build_samples(
        train_cells,
        spec0,
        samples_per_dataset=cfg.samples_per_dataset,
        dataset_weights=cfg.dataset_weights,
        jobs=jobs,
        desc="train samples",
    )
    val_s = build_samples(
        val_cells,
        spec0,
        samples_per_dataset=max(1, cfg.samples_per_dataset // 3),
        dataset_weights=cfg.dataset_weights,
        jobs=jobs,
        desc="val samples",
    )
    if len(train_s) == 0:
        raise ValueError("the training cells yield no samples (too short or all invalid)")
    t_prepared = time.perf_counter()
    seq_mean, seq_std, st_mean, st_std = normalisation_stats(train_s)
    # the device's fallback to the fade law (hindcast) for histories sparser than any the network trained on
    fallback = spec0.fallback.model_copy(
        update={
            "max_window_spacing": cfg.fallback_max_window_spacing,
            "margin": cfg.fallback_margin,
            "min_points": cfg.fallback_min_points,
        }
    )
    spec = spec0.model_copy(
        update={
            "seq_mean": seq_mean,
            "seq_std": seq_std,
            "static_mean": st_mean,
            "static_std": st_std,
            "output_scale": cfg.output_scale,
            "fallback": fallback,
        }
    )
    spec = FeatureSpec.model_validate(spec.model_dump())

    model, history = fit_keras(cfg, spec, train_s, val_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="battwin-export-") as tmp:
        work = Path(tmp)
        staging = work / "staging"
        staging.mkdir()
        check = val_s if len(val_s) else train_s
        quant, parity, export_report = export_model(model, cfg, spec, check, staging, work)
        tfl = staging / MODEL_TFLITE
        sha = sha256_file(tfl)
        t_trained = time.perf_counter()
        mf = ModelFile(
            version=model_version(fp, sha),
            eol_threshold=cfg.eol_threshold,
            tflite_sha256=sha,
            tflite_bytes=tfl.stat().st_size,
            quantization=quant,
            parity_max_abs_soh=parity,
            seq_input=TensorSpec(name="seq", shape=[1, spec.window, len(spec.seq_features)]),
            static_input=TensorSpec(name="static", shape=[1, len(spec.static_features)]),
            output=TensorSpec(name="correction", shape=[1, 2 * len(spec.horizons)]),
            features=spec,
            metrics={"export": export_report},
            provenance=Provenance(
                datasets=sorted({c.dataset for c in all_cells}),
                data_fingerprint=fp,
                train_cells=split.train,
                val_cells=split.val,
                test_cells=split.test,
                unscorable_cells=unscorable_cells(all_cells),
                n_train_samples=len(train_s),
                n_val_samples=len(val_s),
                seed=cfg.seed,
                epochs_run=len(history.get("loss", [])),
                training_time_s=round(t_trained - t_start, 2),
                prepare_time_s=round(t_prepared - t_start, 2),
                created_utc=created,
                tool_versions=_versions(),
                config=cfg.model_dump(),
            ),
        )
        write_model_file(mf, staging / MODEL_JSON)
        for name in (MODEL_TFLITE, MODEL_JSON):
            shutil.copyfile(staging / name, out_dir / name)
        if report_dir is not None:  # the Keras twin (batch 1) of the export: parity tests and benchmarks
            report_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / KERAS_FILE, report_dir / KERAS_FILE)

    device_model = load_hybrid_model(out_dir)  # the files must load on the device runtime
    band, calibration = _eol_band(cfg, device_model, val_cells)
    if band != device_model.spec.eol_band_sigmas:
        device_model.spec = device_model.spec.model_copy(update={"eol_band_sigmas": band})
    # the 80 % interval's spread factors, on the validation cells with the calibrated band (never test cells)
    intervals, interval_table = calibrate_interval_spread(
        val_cells, device_model, cfg.eval_points, threshold=cfg.eol_threshold, max_cycles=cfg.max_cycles
    )
    spec = spec.model_copy(update={"eol_band_sigmas": band, "intervals": intervals})
    mf = ModelFile.model_validate(
        mf.model_copy(update={"features": spec, "version": model_version(fp, sha, spec)}).model_dump()
    )
    write_model_file(mf, out_dir / MODEL_JSON)
    device_model = load_hybrid_model(out_dir)
    export_report = {**export_report, "eol_band": calibration, "intervals": interval_table}
    metrics: dict[str, Any] = {}
    if test_cells:
        with tempfile.TemporaryDirectory(prefix="battwin-eval-") as tmp_eval:
            metrics = evaluate(
                test_cells,
                device_model,
                report_dir or Path(tmp_eval),
                points=cfg.eval_points,
                threshold=cfg.eol_threshold,
                max_cycles=cfg.max_cycles,
                plots=report_dir is not None,
            )
    mf = mf.model_copy(
        update={"metrics": {"export": export_report, "held_out": headline_metrics(metrics), "history": history}}
    )
    mf = ModelFile.model_validate(mf.model_dump())
    write_model_file(mf, out_dir / MODEL_JSON)
    if report_dir is not None:
        write_training_report(report_dir, mf, metrics, history, time.perf_counter() - t_start)
    return TrainResult(model_dir=out_dir, model_file=mf, metrics=metrics, report_dir=report_dir)
