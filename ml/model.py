"""The Keras network (TensorFlow is imported lazily: importing ``ml`` stays cheap)."""

from __future__ import annotations

from typing import Any

SEQ_INPUT = "seq"
STATIC_INPUT = "static"
OUTPUT = "correction"


def build_model(
    window: int,
    n_seq: int,
    n_static: int,
    n_out: int,
    *,
    units: int,
    hidden: int,
    batch_size: int | None = None,
    dropout: float = 0.0,
    l2: float = 0.0,
) -> Any:
    """LSTM over the window, joined with the static features, to ``n_out`` outputs (trust and offset per
    horizon, see hybrid.log_rel_forecast).

    The output layer starts at zero: an untrained model is exactly the physics prior (u = 0, r = 0).
    ``batch_size=1`` builds the export twin (Keras 3 LSTM converts to TFLite only with a fixed batch).
    """
    import keras

    seq = keras.Input(shape=(window, n_seq), batch_size=batch_size, name=SEQ_INPUT)
    static = keras.Input(shape=(n_static,), batch_size=batch_size, name=STATIC_INPUT)
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    x = keras.layers.LSTM(units, name="lstm", kernel_regularizer=reg, recurrent_regularizer=reg)(seq)
    z = keras.layers.Concatenate(name="join")([x, static])
    if dropout > 0:
        z = keras.layers.Dropout(dropout, name="dropout_in")(z)
    z = keras.layers.Dense(hidden, activation="tanh", name="dense", kernel_regularizer=reg)(z)
    if dropout > 0:
        z = keras.layers.Dropout(dropout, name="dropout_hidden")(z)
    out = keras.layers.Dense(
        n_out, name=OUTPUT, kernel_initializer="zeros", bias_initializer="zeros", kernel_regularizer=reg
    )(z)
    return keras.Model(inputs=[seq, static], outputs=out, name="battwin_soh_hybrid")


def trust_offset_loss(n_horizons: int, delta: float, horizon_weights: list[float], trust_penalty: float) -> Any:
    """Masked Huber loss of ``(1+u)·b + r`` against ``y`` (all in units of output_scale), plus
    ``trust_penalty · mean(u²)`` (a pull towards the physics prior).

    ``y_true`` = [y (K), mask (K), b (K)]; ``y_pred`` = [u (K), r (K)].
    """
    import keras
    from keras import ops

    k = n_horizons
    hw = ops.convert_to_tensor(horizon_weights, dtype="float32")

    def loss(y_true: Any, y_pred: Any) -> Any:
        y, m, b = y_true[:, :k], y_true[:, k : 2 * k] * hw, y_true[:, 2 * k :]
        u, r = y_pred[:, :k], y_pred[:, k:]
        err = ops.abs((1.0 + u) * b + r - y)
        quad = ops.minimum(err, delta)
        h = 0.5 * quad * quad + delta * (err - quad)
        data = ops.sum(m * h, axis=1) / ops.maximum(ops.sum(m, axis=1), 1e-6)
        return data + trust_penalty * ops.mean(u * u, axis=1)

    keras.saving.register_keras_serializable("battwin")(loss)
    return loss
