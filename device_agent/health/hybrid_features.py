"""The hybrid health model's inputs (:mod:`device_agent.health.hybrid`), shared by the device and the trainer
(``ml``): the cleaned history, the :class:`Prepared` inputs, and the unshaped forecast ``w(h)·b(h) + r(h)`` from
the network's raw output. numpy only, never TensorFlow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from device_agent.health.capacity_cleaning import causal_clean
from device_agent.health.fade_law import CapacityPoint, FadeFit, fit_fade
from device_agent.health.knee import recent_log_slope
from device_agent.health.model_files import FeatureSpec

SEQ_FEATURES: tuple[str, ...] = ("log_cap_rel", "age", "log_fit_rel", "valid")
STATIC_BASE_FEATURES: tuple[str, ...] = (
    "has_prior",
    "prior_rmse_pct",
    "prior_z",
    "log_level_c0",
    "log_n",
    "log_span",
)
MIN_POINTS = 3


def static_feature_names(horizons: Sequence[int]) -> list[str]:
    return [f"prior_h{h}" for h in horizons] + list(STATIC_BASE_FEATURES)


@dataclass(frozen=True, slots=True)
class Prepared:
    """The model inputs for one history, and what is needed to turn outputs into a forecast."""

    seq: np.ndarray  # (window, n_seq) float32, normalised
    static: np.ndarray  # (n_static,) float32, normalised
    level_ah: float
    last_cycle: float
    n_points: int
    fit: FadeFit | None
    prior_clip: tuple[float, float]
    #: why the device forecasts with the fade law instead of the network (None = the network); see
    #: decide_fallback
    fallback: str | None = None
    #: the hindcast RMSEs (log capacity) behind that decision: (network, fade law); NaN = not run
    hindcast: tuple[float, float] = (math.nan, math.nan)
    #: the measured recent trend: robust slope of log capacity per cycle over the last points (see
    #: knee.recent_log_slope); 0 when unknown
    trend_slope: float = 0.0

    def base(self, target_cycles: np.ndarray) -> np.ndarray:
        """b(h) = clip(log(prior / level)) at absolute cycles; 0 (persistence) without a prior."""
        t = np.asarray(target_cycles, dtype=float)
        if self.fit is None:
            return np.zeros_like(t)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            b = np.log(self.fit.project(t) / self.level_ah)
        b = np.nan_to_num(b, nan=self.prior_clip[0], neginf=self.prior_clip[0], posinf=self.prior_clip[1])
        return np.clip(b, self.prior_clip[0], self.prior_clip[1])


def _median(values: np.ndarray) -> float:
    return float(np.median(values))


def cleaned_history(points: Sequence[CapacityPoint], spec: FeatureSpec) -> list[CapacityPoint]:
    """The cleaned history the model sees (the last ``max_history`` cleaned points)."""
    tail = list(points[-4 * spec.max_history :])
    return causal_clean(tail, spec.cleaning)[-spec.max_history :]


def prepare(points: Sequence[CapacityPoint], c0_ah: float, spec: FeatureSpec) -> Prepared | None:
    """Compute the model inputs from a capacity history (oldest first); None if < 3 cleaned points."""
    return prepare_cleaned(cleaned_history(points, spec), c0_ah, spec)


def prepare_cleaned(hist: Sequence[CapacityPoint], c0_ah: float, spec: FeatureSpec) -> Prepared | None:
    """:func:`prepare` on a history already cleaned by :func:`cleaned_history`."""
    n = len(hist)
    if n < MIN_POINTS or not (math.isfinite(c0_ah) and c0_ah > 0):
        return None
    cycles = np.array([p.cycle for p in hist], dtype=float)
    caps = np.array([p.capacity_ah for p in hist], dtype=float)
    level = _median(caps[-spec.level_points :])
    fit = fit_fade(hist, detect_knees=spec.knee_prior)
    lo, hi = spec.prior_clip
    w = spec.window
    k = min(w, n)
    seq_raw = np.zeros((k, len(SEQ_FEATURES)), dtype=float)
    seq_raw[:, 0] = np.clip(np.log(caps[-k:] / level), -1.0, 1.0)
    seq_raw[:, 1] = np.clip((cycles[-1] - cycles[-k:]) / spec.cycle_scale, 0.0, 50.0)
    if fit is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            fitted = np.log(fit.fitted()[-k:] / level)
        seq_raw[:, 2] = np.clip(np.nan_to_num(fitted, nan=lo, neginf=lo, posinf=hi), lo, hi)
    seq_raw[:, 3] = 1.0
    seq = np.zeros((w, len(SEQ_FEATURES)), dtype=np.float32)
    mean = np.asarray(spec.seq_mean, dtype=float)
    std = np.asarray(spec.seq_std, dtype=float)
    seq[w - k :] = (seq_raw - mean) / std
    prep = Prepared(seq, np.zeros(0, dtype=np.float32), level, float(cycles[-1]), n, fit, (lo, hi))
    prep = replace(prep, trend_slope=recent_log_slope(cycles, caps))
    horizons = np.asarray(spec.horizons, dtype=float)
    b = prep.base(cycles[-1] + horizons)
    static_raw = np.concatenate(
        [
            b,
            [
                1.0 if fit is not None else 0.0,
                min(100.0 * fit.rmse_log, 20.0) if fit is not None else 0.0,
                fit.z - 1.0 if fit is not None else 0.0,
                float(np.clip(math.log(level / c0_ah), -1.5, 0.5)),
                math.log1p(n),
                math.log1p(max(cycles[-1] - cycles[0], 0.0)),
            ],
        ]
    )
    static = ((static_raw - np.asarray(spec.static_mean)) / np.asarray(spec.static_std)).astype(np.float32)
    return replace(prep, static=static)


def correction_at(r: np.ndarray, horizons: Sequence[int], h: np.ndarray) -> np.ndarray:
    """r(h): linear in log2(h) between the horizons, constant outside them."""
    xs = np.log2(np.asarray(horizons, dtype=float))
    hh = np.log2(np.clip(np.asarray(h, dtype=float), horizons[0], horizons[-1]))
    return np.asarray(np.interp(hh, xs, np.asarray(r, dtype=float)))


def log_rel_forecast(prep: Prepared, out: np.ndarray, spec: FeatureSpec, targets: np.ndarray) -> np.ndarray:
    """log(C/level) at absolute target cycles from the model's raw output [u (K), r/output_scale (K)],
    before the shape rule (see :func:`shaped_log_rel`)."""
    t = np.asarray(targets, dtype=float)
    k = len(spec.horizons)
    h = t - prep.last_cycle
    w = np.clip(1.0 + correction_at(out[:k], spec.horizons, h), *spec.trust_clip)
    r = correction_at(out[k : 2 * k], spec.horizons, h) * spec.output_scale
    lo, hi = prep.prior_clip
    return np.asarray(np.clip(w * prep.base(t) + r, lo, hi))
