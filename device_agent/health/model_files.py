"""The files a learned health model ships as: ``model.tflite`` + ``model.json`` (this schema).

Shared by the trainer (``ml``, which writes them) and the device runtime (``device_agent.health.hybrid``,
which reads and checks them before use). numpy and pydantic only: no TensorFlow here.

``model.json`` states everything the device needs to compute the model's inputs exactly as in training
(feature names, window, horizons, normalisation, cleaning rules), the tensor shapes it must find in the
``.tflite``, the sha256 of the ``.tflite``, and the provenance of the model (data fingerprint, cells,
held-out cells, metrics, training time).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_JSON = "model.json"
MODEL_TFLITE = "model.tflite"
SCHEMA_VERSION = 1

Finite = Annotated[float, Field(allow_inf_nan=False)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CleaningSpec(_Strict):
    """Causal cleaning of a capacity history (the same rules on the device and in training).

    A capacity is compared with ``ref`` = the median of the last ``ref_points`` kept capacities. Below
    ``low_frac·ref`` (a failed or aborted run) or above ``high_frac·ref`` (a gross outlier) it is set
    aside; ``shift_points`` consecutive set-aside capacities on the same side are a level shift (the
    cell now runs under other conditions): the history restarts at the first of them. A capacity back
    within bounds of the regime before the shift ends the excursion (see hybrid.clean_series).

    A kept capacity more than ``dip_frac`` below both the median of the ``ref_points`` kept capacities before
    it and that of the ``ref_points`` after it is a failed reading (a "dip": a discharge recorded at a fraction
    of its capacity) and is left out (``capacity_cleaning.drop_dips``; the newest capacity, with none after it
    yet, is not judged). None: no dip rule. A model.json without the field gets 0.1 (ml/README.md, "Dense
    histories with failed readings").
    """

    low_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    high_frac: Annotated[float, Field(gt=1.0, le=10.0)] = 1.3
    ref_points: Annotated[int, Field(ge=1, le=50)] = 5
    shift_points: Annotated[int, Field(ge=2, le=50)] = 3
    dip_frac: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] | None = 0.1


class FallbackSpec(_Strict):
    """When the device forecasts with the fade law instead of the network (see hybrid.decide_fallback):
    on a hindcast over the cell's own last ``hindcast_frac`` of cleaned points (at least
    ``min_hindcast_points``), from a history of at least ``min_points``, the network's log-capacity RMSE is
    more than ``(1 + margin)`` times the fade law's. The hindcast decides

    * for every history when ``enabled`` (off unless model.json turns it on: with the leave-one-dataset-out
      networks no margin is no worse than "never" on horizon RMSE, ml/README.md);
    * for a sparse history when ``max_window_spacing`` is set: the network's input window (its last
      ``window`` cleaned points) spans more than that many cycles per point. The network was trained on
      lab cells measured every cycle; a device measures capacity only on complete discharges. None (a
      model.json from before it): no such check."""

    enabled: bool = False
    min_points: Annotated[int, Field(ge=6, le=10_000)] = 20
    hindcast_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    min_hindcast_points: Annotated[int, Field(ge=2, le=1000)] = 5
    margin: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] = 0.0
    max_window_spacing: Annotated[float, Field(ge=1.0, le=1e6, allow_inf_nan=False)] | None = None


class IntervalSpec(_Strict):
    """The spread factor s(h) of the 80 % forecast interval (see device_agent.health.intervals), per method,
    at ``horizons`` (cycles ahead). Calibrated by the trainer on validation cells only (ml.eol_band)."""

    horizons: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(min_length=1)
    hybrid: list[Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]]
    physics: list[Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]]
    #: the central coverage the factors were calibrated for
    coverage: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8

    @model_validator(mode="after")
    def _lengths(self) -> IntervalSpec:
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError("interval horizons must be strictly increasing")
        if len(self.hybrid) != len(self.horizons) or len(self.physics) != len(self.horizons):
            raise ValueError("interval spread factors must have one value per horizon")
        return self


class FeatureSpec(_Strict):
    """How the model's two inputs are computed from the capacity history (see hybrid.prepare)."""

    window: Annotated[int, Field(ge=2, le=512)]
    horizons: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(min_length=1)
    seq_features: list[str] = Field(min_length=1)
    static_features: list[str] = Field(min_length=1)
    seq_mean: list[Finite]
    seq_std: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]]
    static_mean: list[Finite]
    static_std: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]]
    #: the model outputs [u(h) for each horizon, r(h) / output_scale for each horizon];
    #: log(C/level) = clip((1 + u)·b + r) with 1 + u clipped to trust_clip (see hybrid)
    output_scale: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    trust_clip: tuple[Finite, Finite] = (0.0, 2.0)
    #: capacity level = median of the last ``level_points`` cleaned capacities
    level_points: Annotated[int, Field(ge=1, le=50)] = 3
    #: cycle ages in the window are divided by this
    cycle_scale: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 100.0
    #: only the last ``max_history`` cleaned capacities are used (bounds the cost on the device)
    max_history: Annotated[int, Field(ge=10, le=100_000)] = 1000
    #: log(prior / level) is clipped to this range before it is a feature and the base of the forecast
    prior_clip: tuple[Finite, Finite] = (-1.5, 0.1)
    cleaning: CleaningSpec = CleaningSpec()
    #: end of life = the first cycle at which the forecast, lowered by ``eol_band_sigmas`` × the cell's
    #: own measurement scatter (the fade fit's RMS log residual without readings more than 5 robust SD
    #: below the fit, at most ``eol_scatter_cap``: hybrid.eol_scatter), is below the
    #: threshold: when a measured capacity is expected to read below it, not the mean forecast. Calibrated
    #: on the validation cells by the trainer (0 = the mean forecast's crossing)
    eol_band_sigmas: Annotated[float, Field(ge=0.0, le=5.0, allow_inf_nan=False)] = 0.0
    eol_scatter_cap: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.1
    #: the device's fallback to the fade law (a model.json without it gets these defaults)
    fallback: FallbackSpec = FallbackSpec()
    #: the prior b(h) is the knee-aware fade law (device_agent.health.knee); a model.json without it was
    #: trained on knee-free priors, and its network gets the inputs it was trained on
    knee_prior: bool = False
    #: the 80 % interval's spread factors (device_agent.health.intervals); None (a model.json from before
    #: intervals) = the default spread
    intervals: IntervalSpec | None = None

    @model_validator(mode="after")
    def _lengths(self) -> FeatureSpec:
        if len(self.seq_mean) != len(self.seq_features) or len(self.seq_std) != len(self.seq_features):
            raise ValueError("seq_mean/seq_std must have one value per seq feature")
        if len(self.static_mean) != len(self.static_features) or len(self.static_std) != len(self.static_features):
            raise ValueError("static_mean/static_std must have one value per static feature")
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError("horizons must be strictly increasing")
        if self.prior_clip[0] >= self.prior_clip[1]:
            raise ValueError("prior_clip must be (low, high) with low < high")
        if self.trust_clip[0] >= self.trust_clip[1]:
            raise ValueError("trust_clip must be (low, high) with low < high")
        return self


class TensorSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    shape: list[Annotated[int, Field(ge=1)]]
    dtype: Literal["float32"] = "float32"


class Provenance(_Strict):
    """Where the model came from. Nothing here depends on the git commit."""

    datasets: list[str]
    #: sha256 over the training files' contents and the train/validation/test cell lists
    data_fingerprint: Sha256Hex
    train_cells: dict[str, list[str]]
    val_cells: dict[str, list[str]]
    test_cells: dict[str, list[str]]
    #: cells whose contract SoH is no state of health (ml.data.scorability): never test cells, training only
    unscorable_cells: dict[str, list[str]] = Field(default_factory=dict)
    n_train_samples: Annotated[int, Field(ge=0)]
    n_val_samples: Annotated[int, Field(ge=0)]
    seed: int
    epochs_run: Annotated[int, Field(ge=0)]
    training_time_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    #: data preparation (per-cell physics fits) included in training_time_s
    prepare_time_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    created_utc: str
    tool_versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


class ModelFile(_Strict):
    """The contents of ``model.json``."""

    schema_version: Literal[1] = 1
    name: str = "battwin-soh-hybrid"
    method: Literal["hybrid"] = "hybrid"
    version: Annotated[str, Field(min_length=1, max_length=64)]
    eol_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    tflite_file: str = MODEL_TFLITE
    tflite_sha256: Sha256Hex
    tflite_bytes: Annotated[int, Field(ge=1)]
    quantization: Literal["float32", "dynamic_range", "float16"]
    #: the largest |TFLite − Keras| output difference (in SoH) measured on validation windows
    parity_max_abs_soh: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    seq_input: TensorSpec
    static_input: TensorSpec
    output: TensorSpec
    features: FeatureSpec
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance

    @model_validator(mode="after")
    def _shapes(self) -> ModelFile:
        f = self.features
        if self.seq_input.shape != [1, f.window, len(f.seq_features)]:
            raise ValueError(f"seq_input shape {self.seq_input.shape} != [1, window, n_seq_features]")
        if self.static_input.shape != [1, len(f.static_features)]:
            raise ValueError(f"static_input shape {self.static_input.shape} != [1, n_static_features]")
        if self.output.shape != [1, 2 * len(f.horizons)]:
            raise ValueError(f"output shape {self.output.shape} != [1, 2 × n_horizons]")
        return self


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_model_file(path: Path) -> ModelFile:
    """Parse model.json (raises OSError / pydantic.ValidationError / ValueError)."""
    return ModelFile.model_validate_json(path.read_bytes())


def write_model_file(model: ModelFile, path: Path) -> None:
    path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
