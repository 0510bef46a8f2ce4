"""The hybrid health model on the device: the fitted fade law, corrected by a small LSTM (TFLite).

numpy + a TFLite interpreter (``ai_edge_litert``, or ``tflite_runtime`` where that is what is installed).
This module must never import TensorFlow: the trainer (``ml``) imports the feature code from here, so
training and device compute the model's inputs with the very same functions.

Model
-----
From the capacity history (the :class:`CapacityPoint` s the device measured, oldest first):

1. ``causal_clean`` (:mod:`device_agent.health.capacity_cleaning`) drops invalid capacities, failed runs,
   gross outliers and dips (a capacity far below the ones before and after it), and restarts the history at
   a sustained level shift (rules in :class:`CleaningSpec`; only the past is used).
2. The level ``L`` = median of the last few cleaned capacities; the prior = the fade law fitted to the
   cleaned history (``fit_fade``). ``b(h) = clip(log(prior(t+h) / L))`` is the prior's log-change ahead.
3. Inputs: a window of the last ``window`` cleaned points (``log C/L``, age in cycles, ``log fit/L``,
   valid flag; left-padded with zeros) and static features (``b`` at each horizon, fit quality, ``log L/C0``,
   history length). The network outputs, at each horizon, how far to trust the prior, ``w(h) = 1 + u(h)``,
   and an offset ``r(h)``.
4. Forecast: ``log(C(t+h)/L) = w(h)·b(h) + r(h)`` (w clipped to ``trust_clip``, the sum to ``prior_clip``),
   with ``u`` and ``r`` interpolated linearly in log2(h) between the horizons and held constant beyond the
   last one; SoH = C / C0. ``w = 0`` is persistence at an offset, ``w = 1`` the physics prior; the trust
   form keeps the fade rate in the prior (fitted per cell) and lets the network judge how far the fit
   can be extrapolated. End of life is the first cycle at which the forecast SoH, lowered by
   ``eol_band_sigmas`` times the cell's own measurement scatter (the fit's RMS log residual without the
   readings more than 5 robust SD below the fit: ``eol_scatter``, ``fade_law.robust_scatter``), falls below
   the threshold (interpolated): when a measured capacity is expected to read below it. The band width
   is calibrated on validation cells by the trainer. RUL = EOL − last cycle. A failed reading (a discharge
   recorded at a fraction of the capacity) is no measure of that scatter: with the plain RMS two of them
   among ~110 points made it 0.066 instead of 0.0019, and a simulated pack at SoH 0.82 was published at
   RUL 2.5 (the first forecast step). The 80 % interval keeps the plain RMS (``interval_scatter``).
5. Shape (``shape_trajectory``): the trajectory is computed on the forecast grid and made non-increasing,
   and where the measured trend falls (the robust slope of the recent cleaned history,
   ``knee.recent_log_slope``) it falls over every step by at least ``SHAPE_SLOPE_FRAC`` (½) of that slope.
   Without it the per-horizon outputs, which are not monotone in ``h``, made ``w·b + r`` rise over a
   stretch of horizons (a simulated cell at cycle 27: trust 0.70 → 0.60 and offset −0.008 → +0.006 between
   16 and 32 cycles ahead, the forecast SoH 0.8929 → 0.8935), and the clamp to non-increasing turned that
   into a plateau: the trajectory stopped falling while the measured capacity kept falling.
   The values scored by the evaluation (``soh_at``) and the EOL are read off this very trajectory.
6. Fallback (``decide_fallback``, parameters ``fallback`` in model.json): from the cell's own past only,
   a hindcast of the last quarter of its cleaned history by the network and by the fade law alone; the
   fade law is used (network output zero: trust 1, offset 0) when the network's hindcast error is more
   than ``1 + margin`` times the fade law's. The hindcast decides for every history only if model.json
   says ``enabled``; with ``max_window_spacing`` it decides for sparse histories: when the network's input
   window spans more cycles per measured point than that. The network was trained on lab cells measured
   every cycle; fed a window measured every ~7 cycles (a simulated pack's backfilled past) it forecast a
   2.5–8 % capacity drop within 16 cycles (RUL 2.5 cycles where the simulator says ~100), and the
   hindcast catches it (network 0.073 vs fade law 0.0016 RMS log error).

With ``knee_prior`` in model.json (the trainer sets it) the prior is knee-aware (``fade_law``/``knee``):
after a detected acceleration of the fade the projection never lies above the post-knee line. A model.json
without it (the shipped model, trained before knees) gets the knee-free prior it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from device_agent.health.capacity_cleaning import causal_clean
from device_agent.health.estimator import Forecast, ModelError
from device_agent.health.fade_law import CapacityPoint, eol_from_trajectory, forecast_step
from device_agent.health.forecast_shape import SHAPE_SLOPE_FRAC, decide_fallback, shape_trajectory, shaped_log_rel
from device_agent.health.hybrid_features import (
    MIN_POINTS,
    SEQ_FEATURES,
    STATIC_BASE_FEATURES,
    Prepared,
    cleaned_history,
    correction_at,
    log_rel_forecast,
    prepare,
    prepare_cleaned,
    static_feature_names,
)
from device_agent.health.model_files import (
    MODEL_JSON,
    FeatureSpec,
    ModelFile,
    TensorSpec,
    read_model_file,
)
from schema.messages import HealthMethod

__all__ = [
    "MIN_AHEAD_CYCLES",
    "MIN_POINTS",
    "SEQ_FEATURES",
    "SHAPE_SLOPE_FRAC",
    "STATIC_BASE_FEATURES",
    "HybridModel",
    "LoadReason",
    "ModelLoadError",
    "Prepared",
    "causal_clean",
    "cleaned_history",
    "correction_at",
    "decide_fallback",
    "eol_scatter",
    "interpreter_class",
    "interval_scatter",
    "load_hybrid_model",
    "log_rel_forecast",
    "prepare",
    "prepare_cleaned",
    "shape_trajectory",
    "shaped_log_rel",
    "static_feature_names",
]

log = logging.getLogger(__name__)

MIN_AHEAD_CYCLES = 50.0


LoadReason = Literal["missing", "bad_json", "sha_mismatch", "corrupt", "shape_mismatch", "runtime_unavailable"]


class ModelLoadError(RuntimeError):
    """The model in a directory cannot be used. ``reason`` says why, ``str()`` says it in words."""

    def __init__(self, reason: LoadReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: LoadReason = reason


def eol_scatter(prep: Prepared, spec: FeatureSpec) -> float:
    """The scatter the EOL band is made of, in log capacity: the fade fit's RMS residual without the failed
    measurements far below the cell's regular ones (``FadeFit.scatter_log``,
    :func:`~device_agent.health.fade_law.robust_scatter`; capped); 0 without a fit."""
    if prep.fit is None:
        return 0.0
    s = prep.fit.scatter_log if math.isfinite(prep.fit.scatter_log) else prep.fit.rmse_log
    if not math.isfinite(s):
        return 0.0
    return float(min(max(s, 0.0), spec.eol_scatter_cap))


def interval_scatter(prep: Prepared, spec: FeatureSpec) -> float:
    """The scatter the 80 % interval is made of: the fade fit's plain RMS log residual (capped; every point,
    as the interval's spread was calibrated with); 0 without a fit."""
    if prep.fit is None or not math.isfinite(prep.fit.rmse_log):
        return 0.0
    return float(min(max(prep.fit.rmse_log, 0.0), spec.eol_scatter_cap))


# --------------------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------------------


def interpreter_class() -> Any:
    for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(mod).Interpreter
        except ImportError:
            continue
    raise ModelLoadError("runtime_unavailable", "neither ai_edge_litert nor tflite_runtime is installed")


class HybridModel:
    """The HealthModel protocol over a checked TFLite interpreter (see load_hybrid_model)."""

    method: HealthMethod = "hybrid"

    def __init__(self, interpreter: Any, model_file: ModelFile, model_dir: Path, io: dict[str, int]) -> None:
        self.model_file = model_file
        self.spec = model_file.features
        self.version = model_file.version
        self.model_dir = model_dir
        self._interp = interpreter
        self._seq_idx = io["seq"]
        self._static_idx = io["static"]
        self._out_idx = io["out"]
        self._lock = threading.Lock()
        self._horizons = list(self.spec.horizons)

    def prepare(self, points: Sequence[CapacityPoint], c0_ah: float) -> Prepared | None:
        """The model inputs, with the fallback decision (decide_fallback) made from this history."""
        hist = cleaned_history(points, self.spec)
        prep = prepare_cleaned(hist, c0_ah, self.spec)
        if prep is None:
            return None
        reason, errs = decide_fallback(hist, c0_ah, self.spec, self.correction)
        return replace(prep, fallback=reason, hindcast=errs)

    def effective_output(self, prep: Prepared, out: np.ndarray) -> np.ndarray:
        """The output the forecast uses: the network's, or zeros (the fade law alone) after a fallback."""
        return np.zeros_like(out) if prep.fallback is not None else out

    def correction(self, prep: Prepared) -> np.ndarray:
        """The raw model output for prepared inputs: [u(h) (K), r(h) / output_scale (K)]."""
        with self._lock:
            self._interp.set_tensor(self._seq_idx, prep.seq[None, :, :])
            self._interp.set_tensor(self._static_idx, prep.static[None, :])
            self._interp.invoke()
            out = np.array(self._interp.get_tensor(self._out_idx)[0], dtype=float)
        if not np.all(np.isfinite(out)):
            raise ModelError("hybrid model produced a non-finite output")
        return out

    def soh_at(self, prep: Prepared, out: np.ndarray, c0_ah: float, target_cycles: np.ndarray) -> np.ndarray:
        """SoH (C / c0) at absolute target cycles from prepared inputs and the model's output (after the
        fallback decision and the shape rule: the values the published trajectory goes through)."""
        y = shaped_log_rel(prep, self.effective_output(prep, out), self.spec, target_cycles)
        return np.asarray(prep.level_ah * np.exp(y) / c0_ah)

    def predict_soh(
        self, points: Sequence[CapacityPoint], c0_ah: float, target_cycles: np.ndarray
    ) -> np.ndarray | None:
        """SoH at absolute target cycles, from the history only; None if not enough history."""
        prep = self.prepare(points, c0_ah)
        if prep is None:
            return None
        return self.soh_at(prep, self.correction(prep), c0_ah, target_cycles)

    def forecast_from(
        self,
        prep: Prepared,
        out: np.ndarray,
        c0_ah: float,
        eol_threshold: float,
        max_cycles: int,
        *,
        band_sigmas: float | None = None,
    ) -> Forecast:
        step = forecast_step(max_cycles)
        cycles = np.arange(prep.last_cycle + step, prep.last_cycle + max_cycles + step, step)
        # the shape rule makes the trajectory non-increasing and falling wherever the fitted trend falls;
        # the EOL is read off the very trajectory published
        soh = self.soh_at(prep, out, c0_ah, cycles)
        k = self.spec.eol_band_sigmas if band_sigmas is None else band_sigmas
        scatter = eol_scatter(prep, self.spec)
        eol = eol_from_trajectory(cycles, soh * math.exp(-k * scatter), eol_threshold)
        mean_crossing = eol_from_trajectory(cycles, soh, eol_threshold) if eol is not None else None
        if eol is not None and mean_crossing is not None:
            # up to where the forecast itself crosses the threshold (at or after the EOL, which is lowered by
            # the band), but never fewer than MIN_AHEAD_CYCLES: past EOL the trajectory still shows
            keep = cycles <= max(mean_crossing + step, eol + step, prep.last_cycle + MIN_AHEAD_CYCLES)
            cycles, soh = cycles[keep], soh[keep]
        params: dict[str, float] = {
            "level_ah": prep.level_ah,
            "eol_band_sigmas": k,
            # the band's scatter (the dashboard draws the band from it); the interval's is the plain RMS
            "scatter_log": scatter,
            "interval_scatter_log": interval_scatter(prep, self.spec),
            "trend_slope_log_per_cycle": prep.trend_slope,
            "fallback_fade_law": 1.0 if prep.fallback is not None else 0.0,
            "hindcast_rmse_log_network": prep.hindcast[0],
            "hindcast_rmse_log_fade_law": prep.hindcast[1],
        }
        if prep.fit is not None:
            params.update({f"prior_{k}": v for k, v in prep.fit.params().items()})
        k = len(self._horizons)
        params.update({f"trust_h{h}": 1.0 + float(v) for h, v in zip(self._horizons, out[:k], strict=True)})
        params.update(
            {f"offset_h{h}": float(v) * self.spec.output_scale for h, v in zip(self._horizons, out[k:], strict=True)}
        )
        return Forecast(
            soh_now=prep.level_ah / c0_ah,
            cycles=cycles.tolist(),
            soh=soh.tolist(),
            eol_cycle=eol,
            params=params,
        )

    def forecast(
        self, points: Sequence[CapacityPoint], c0_ah: float, eol_threshold: float, max_cycles: int
    ) -> Forecast | None:
        prep = self.prepare(points, c0_ah)
        if prep is None:
            return None
        return self.forecast_from(prep, self.correction(prep), c0_ah, eol_threshold, max_cycles)


def _check_tensor(kind: str, detail: dict[str, Any], spec: TensorSpec) -> None:
    shape = [int(x) for x in detail["shape"]]
    if shape != spec.shape:
        raise ModelLoadError("shape_mismatch", f"{kind} tensor has shape {shape}, model.json says {spec.shape}")
    if np.dtype(detail["dtype"]) != np.float32:
        raise ModelLoadError("shape_mismatch", f"{kind} tensor has dtype {np.dtype(detail['dtype'])}, not float32")


def load_hybrid_model(model_dir: Path | str, *, num_threads: int = 1) -> HybridModel:
    """Load and check model.tflite + model.json; raise ModelLoadError with the reason if unusable."""
    d = Path(model_dir)
    json_path = d / MODEL_JSON
    if not d.is_dir():
        raise ModelLoadError("missing", f"model directory {d} does not exist")
    if not json_path.is_file():
        raise ModelLoadError("missing", f"{json_path} does not exist")
    try:
        mf = read_model_file(json_path)
    except (OSError, ValueError, ValidationError) as exc:
        raise ModelLoadError("bad_json", f"{json_path}: {exc}") from exc
    spec = mf.features
    if list(spec.seq_features) != list(SEQ_FEATURES):
        raise ModelLoadError("bad_json", f"seq features {spec.seq_features} != this runtime's {list(SEQ_FEATURES)}")
    expected_static = static_feature_names(spec.horizons)
    if list(spec.static_features) != expected_static:
        raise ModelLoadError("bad_json", f"static features {spec.static_features} != {expected_static}")
    tfl = d / mf.tflite_file
    if not tfl.is_file():
        raise ModelLoadError("missing", f"{tfl} does not exist")
    # read once, check those bytes, and load those very bytes: a file swapped between the check and the
    # load cannot slip in
    try:
        content = tfl.read_bytes()
    except OSError as exc:
        raise ModelLoadError("missing", f"{tfl} cannot be read: {exc}") from exc
    sha = hashlib.sha256(content).hexdigest()
    if sha != mf.tflite_sha256:
        raise ModelLoadError("sha_mismatch", f"{tfl} has sha256 {sha}, model.json says {mf.tflite_sha256}")
    interp_cls = interpreter_class()
    try:
        interp = interp_cls(model_content=content, num_threads=num_threads)
        interp.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError on a bad flatbuffer
        raise ModelLoadError("corrupt", f"{tfl} cannot be loaded: {exc}") from exc
    inputs = interp.get_input_details()
    outputs = interp.get_output_details()
    if len(inputs) != 2 or len(outputs) != 1:
        raise ModelLoadError("shape_mismatch", f"expected 2 inputs and 1 output, got {len(inputs)} and {len(outputs)}")
    by_rank = {len(x["shape"]): x for x in inputs}
    if set(by_rank) != {2, 3}:
        raise ModelLoadError("shape_mismatch", f"input ranks {[len(x['shape']) for x in inputs]}, expected 3 and 2")
    _check_tensor("sequence input", by_rank[3], mf.seq_input)
    _check_tensor("static input", by_rank[2], mf.static_input)
    _check_tensor("output", outputs[0], mf.output)
    io = {"seq": int(by_rank[3]["index"]), "static": int(by_rank[2]["index"]), "out": int(outputs[0]["index"])}
    try:  # smoke run: a corrupt model that still parses must not reach the agent
        interp.set_tensor(io["seq"], np.zeros(mf.seq_input.shape, dtype=np.float32))
        interp.set_tensor(io["static"], np.zeros(mf.static_input.shape, dtype=np.float32))
        interp.invoke()
        ok = bool(np.all(np.isfinite(interp.get_tensor(io["out"]))))
    except Exception as exc:
        raise ModelLoadError("corrupt", f"{tfl} fails to run: {exc}") from exc
    if not ok:
        raise ModelLoadError("corrupt", f"{tfl} produces non-finite outputs")
    log.info("hybrid model loaded", extra={"version": mf.version, "dir": str(d)})
    return HybridModel(interp, mf, d, io)
