"""Convert a saved Keras model to TFLite. Run as a subprocess (``python -m ml.convert_worker``) so that a
crash of the converter (it has segfaulted on full-int8 LSTM quantisation) cannot take the trainer down."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("ml.convert_worker")


def convert(keras_path: Path, out_path: Path, quantization: str) -> int:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(keras_path, compile=False)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "dynamic_range":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}")
    data = conv.convert()
    tmp = out_path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out_path)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keras", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quantization", choices=["float32", "dynamic_range", "float16"], required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = convert(args.keras, args.out, args.quantization)
    log.info("converted %s bytes", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
