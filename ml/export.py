"""Export the fitted model to TFLite (converter in a subprocess) and check parity against Keras."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np

from device_agent.health.hybrid import interpreter_class
from device_agent.health.model_files import MODEL_TFLITE, FeatureSpec
from ml.fit import horizon_weights, normalise, targets
from ml.samples import SampleSet
from ml.train_config import TrainConfig

log = logging.getLogger(__name__)

Quantization = Literal["float32", "dynamic_range", "float16"]
#: largest |TFLite − Keras| SoH difference accepted for each export (the parity tolerance)
PARITY_TOLERANCE: dict[str, float] = {"dynamic_range": 0.005, "float16": 0.001, "float32": 1e-5}
#: an export may not make the validation loss worse than Keras by more than this fraction
PARITY_LOSS_SLACK = 0.01
CONVERT_TIMEOUT_S = 600
KERAS_FILE = "model.keras"


class ExportError(RuntimeError):
    """The TFLite export failed (the converter crashed, or no export kept the accuracy)."""


def convert_to_tflite(keras_path: Path, out: Path, quant: Quantization) -> None:
    """Convert a saved Keras model to TFLite with ``ml.convert_worker`` in a subprocess (ExportError if not)."""
    cmd = [
        sys.executable,
        "-m",
        "ml.convert_worker",
        "--keras",
        str(keras_path),
        "--out",
        str(out),
        "--quantization",
        quant,
    ]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # our own interpreter running our own module: no untrusted input
        res = subprocess.run(  # noqa: S603
            cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"TFLite conversion ({quant}) timed out after {CONVERT_TIMEOUT_S} s") from exc
    if res.returncode != 0 or not out.is_file():
        tail = (res.stderr or "").strip().splitlines()[-5:]
        raise ExportError(f"TFLite conversion ({quant}) failed with exit code {res.returncode}: {' | '.join(tail)}")


def _tflite_outputs(path: Path, seq: np.ndarray, static: np.ndarray) -> np.ndarray:
    it = interpreter_class()(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ins = {len(d["shape"]): d["index"] for d in it.get_input_details()}
    out_idx = it.get_output_details()[0]["index"]
    outs = []
    for i in range(len(seq)):
        it.set_tensor(ins[3], seq[i : i + 1])
        it.set_tensor(ins[2], static[i : i + 1])
        it.invoke()
        outs.append(np.array(it.get_tensor(out_idx)[0]))
    return np.asarray(outs)


def soh_at_horizons(s: SampleSet, out: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """SoH at the model's horizons for raw model outputs (as hybrid.log_rel_forecast at t + h)."""
    k = len(spec.horizons)
    w = np.clip(1.0 + out[:, :k], *spec.trust_clip)
    log_rel = np.clip(w * s.base + out[:, k:] * spec.output_scale, *spec.prior_clip)
    return np.asarray(s.level_c0[:, None] * np.exp(log_rel))


def _loss_np(y: np.ndarray, pred: np.ndarray, delta: float, hw: np.ndarray, w: np.ndarray) -> float:
    """The data part of trust_offset_loss in numpy (to compare exports with Keras)."""
    k = pred.shape[1] // 2
    t, m, b = y[:, :k], y[:, k : 2 * k] * hw, y[:, 2 * k :]
    err = np.abs((1.0 + pred[:, :k]) * b + pred[:, k:] - t)
    quad = np.minimum(err, delta)
    h = 0.5 * quad**2 + delta * (err - quad)
    per = (m * h).sum(1) / np.maximum(m.sum(1), 1e-6)
    return float((per * w).sum() / max(w.sum(), 1e-12))


def export_model(
    keras_model: Any,
    cfg: TrainConfig,
    spec: FeatureSpec,
    val: SampleSet,
    out_dir: Path,
    work: Path,
) -> tuple[Quantization, float, dict[str, Any]]:
    """Convert to TFLite (in a subprocess), check parity against Keras, write model.tflite into out_dir."""
    from ml.model import build_model  # keras: imported only when exporting

    twin = build_model(
        cfg.window,
        len(spec.seq_features),
        len(spec.static_features),
        2 * len(spec.horizons),
        units=cfg.units,
        hidden=cfg.hidden,
        batch_size=1,
    )
    twin.set_weights(keras_model.get_weights())
    kpath = work / KERAS_FILE
    twin.save(kpath)
    n_check = min(len(val), 256)
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(val), n_check, replace=False)) if len(val) > n_check else np.arange(len(val))
    vs = val.subset(pick)
    seq, static = normalise(vs, spec)
    ref = np.asarray(keras_model.predict([seq, static], verbose=0, batch_size=256))
    y = targets(vs, cfg.output_scale)
    hw = horizon_weights(cfg)
    ref_loss = _loss_np(y, ref, cfg.huber_delta, hw, vs.weight)
    # auto: both quantised exports are tried; of those that keep the accuracy (parity within tolerance,
    # validation loss within PARITY_LOSS_SLACK of Keras) the closest to Keras wins; float32 only if none does
    rounds: list[list[Quantization]] = (
        [["dynamic_range", "float16"], ["float32"]] if cfg.quantization == "auto" else [[cfg.quantization]]
    )
    report: dict[str, Any] = {"keras_val_loss": ref_loss, "n_windows": int(n_check), "candidates": {}}
    for candidates in rounds:
        accepted: list[tuple[float, int, Quantization, Path]] = []
        for q in candidates:
            path = work / f"model_{q}.tflite"
            try:
                convert_to_tflite(kpath, path, q)
            except ExportError as exc:
                log.warning("export candidate %s failed: %s", q, exc)
                report["candidates"][q] = {"error": str(exc)}
                continue
            out = _tflite_outputs(path, seq, static)
            diff = float(np.max(np.abs(soh_at_horizons(vs, out, spec) - soh_at_horizons(vs, ref, spec))))
            loss = _loss_np(y, out, cfg.huber_delta, hw, vs.weight)
            ok = diff <= PARITY_TOLERANCE[q] and loss <= ref_loss * (1 + PARITY_LOSS_SLACK) + 1e-9
            size = path.stat().st_size
            report["candidates"][q] = {
                "bytes": size,
                "parity_max_abs_soh": diff,
                "parity_max_abs_output": float(np.max(np.abs(out - ref))),
                "val_loss": loss,
                "accepted": ok,
            }
            log.info("export candidate %s: %s", q, report["candidates"][q])
            if ok:
                accepted.append((diff, size, q, path))
        if accepted:
            diff, _size, q, path = min(accepted)
            shutil.copyfile(path, out_dir / MODEL_TFLITE)
            report["chosen"] = q
            return q, diff, report
    raise ExportError(f"no TFLite export kept the accuracy: {report['candidates']}")
