"""Fit the Keras model: normalisation from the training samples, loss targets, seeds, the fit itself."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from device_agent.health.hybrid import SEQ_FEATURES
from device_agent.health.model_files import FeatureSpec
from ml.samples import SampleSet
from ml.train_config import TrainConfig


def normalisation_stats(train: SampleSet) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean and standard deviation of the sequence rows (valid rows only) and of the static inputs."""
    valid = train.seq[:, :, SEQ_FEATURES.index("valid")] > 0
    rows = train.seq[valid]
    seq_mean = rows.mean(axis=0).astype(float)
    seq_std = rows.std(axis=0).astype(float)
    vi = SEQ_FEATURES.index("valid")
    seq_mean[vi], seq_std[vi] = 0.0, 1.0
    st_mean = train.static.mean(axis=0).astype(float)
    st_std = train.static.std(axis=0).astype(float)
    seq_std = np.where(seq_std > 1e-6, seq_std, 1.0)
    st_std = np.where(st_std > 1e-6, st_std, 1.0)
    return seq_mean.tolist(), seq_std.tolist(), st_mean.tolist(), st_std.tolist()


def normalise(s: SampleSet, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """The normalisation ``hybrid.prepare`` applies (padded rows stay zero)."""
    valid = s.seq[:, :, SEQ_FEATURES.index("valid")] > 0
    seq = (s.seq - np.asarray(spec.seq_mean, np.float32)) / np.asarray(spec.seq_std, np.float32)
    seq = np.where(valid[:, :, None], seq, 0.0).astype(np.float32)
    static = (s.static - np.asarray(spec.static_mean, np.float32)) / np.asarray(spec.static_std, np.float32)
    return seq, static.astype(np.float32)


def targets(s: SampleSet, scale: float) -> np.ndarray:
    """y_true for the loss: [y / scale, mask, b / scale] (see ml.model.trust_offset_loss)."""
    mask = np.isfinite(s.target)
    y = np.where(mask, s.target, 0.0) / scale
    return np.concatenate([y, mask.astype(np.float32), s.base / scale], axis=1).astype(np.float32)


def _set_seeds(seed: int) -> None:
    import keras
    import tensorflow as tf

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def horizon_weights(cfg: TrainConfig) -> np.ndarray:
    """The loss weight of each horizon, mean 1 (see ``TrainConfig.horizon_weight_power``)."""
    h = np.asarray(cfg.horizons, dtype=float) ** cfg.horizon_weight_power
    return (np.concatenate([h / h.mean()])).astype(np.float32)


def fit_keras(
    cfg: TrainConfig, spec: FeatureSpec, train: SampleSet, val: SampleSet
) -> tuple[Any, dict[str, list[float]]]:
    import keras

    from ml.model import build_model, trust_offset_loss

    _set_seeds(cfg.seed)
    model = build_model(
        cfg.window,
        len(spec.seq_features),
        len(spec.static_features),
        2 * len(spec.horizons),
        units=cfg.units,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        l2=cfg.l2,
    )
    hw = horizon_weights(cfg)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=1.0),
        loss=trust_offset_loss(len(spec.horizons), cfg.huber_delta, hw.tolist(), cfg.trust_penalty),
    )
    seq, static = normalise(train, spec)
    y = targets(train, cfg.output_scale)
    callbacks: list[Any] = [_TqdmEpochs(cfg.epochs)]
    validation = None
    if len(val):
        vseq, vstatic = normalise(val, spec)
        validation = ([vseq, vstatic], targets(val, cfg.output_scale), val.weight)
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
        )
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, cfg.patience // 3))
        )
    hist = model.fit(
        [seq, static],
        y,
        sample_weight=train.weight,
        validation_data=validation,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    history = {k: [float(x) for x in v] for k, v in hist.history.items() if k in ("loss", "val_loss")}
    return model, history


class _TqdmEpochs:
    """A Keras callback (duck-typed, to keep keras out of module import) with a tqdm bar over epochs."""

    def __new__(cls, epochs: int) -> Any:
        import keras
        from tqdm import tqdm

        class _Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
                self.bar = tqdm(total=epochs, desc="train", unit="epoch", leave=False)

            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if "loss" in k})
                self.bar.update(1)

            def on_train_end(self, logs: dict[str, float] | None = None) -> None:
                self.bar.close()

        return _Cb()
