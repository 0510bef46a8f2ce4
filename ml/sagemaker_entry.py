"""SageMaker (TensorFlow framework, script mode) entry point for training the hybrid model.

SageMaker's conventions:

* ``SM_CHANNEL_TRAIN`` — the ``train`` channel: one sub-folder per dataset (``<dataset>/*.csv``, the folder
  name is the dataset), or the CSVs directly (then the channel's folder name is the dataset);
* ``SM_MODEL_DIR`` — model.tflite + model.json go here (SageMaker uploads it as model.tar.gz);
* ``SM_OUTPUT_DATA_DIR`` — the training report (metrics.json, predictions.csv, plots) goes here;
* hyperparameters — as command-line arguments (``--epochs 40 --tiny true``, values are strings) and as a
  JSON object in ``SM_HPS``; the command line wins. Any field of :class:`ml.train_config.TrainConfig` can be set;
  ``--model_dir`` (the S3 path script mode adds) is ignored.

Prints ``held_out_<dataset>_<method>_rmse_pp=<value>`` lines for SageMaker metric definitions.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("ml.sagemaker_entry")

DEFAULT_CHANNEL = "/opt/ml/input/data/train"
DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_OUTPUT_DIR = "/opt/ml/output/data"
IGNORED = {"model_dir", "model-dir"}


def _value(text: Any) -> Any:
    """A hyperparameter value: JSON if it parses (numbers, true/false, lists, objects), else the string."""
    if not isinstance(text, str):
        return text
    low = text.strip()
    if low in ("True", "False"):
        return low == "True"
    try:
        return json.loads(low)
    except json.JSONDecodeError:
        return text


def parse_hyperparameters(argv: list[str], env_hps: str | None) -> dict[str, Any]:
    """SM_HPS (JSON object) overlaid with ``--key value`` / ``--key=value`` / ``--flag`` arguments."""
    hps: dict[str, Any] = {}
    if env_hps:
        loaded = json.loads(env_hps)
        if not isinstance(loaded, dict):
            raise ValueError("SM_HPS must be a JSON object")
        hps.update({str(k): _value(v) for k, v in loaded.items()})
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}")
        key, eq, val = arg[2:].partition("=")
        if eq:
            hps[key] = _value(val)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            hps[key] = _value(argv[i + 1])
            i += 2
        else:
            hps[key] = True
            i += 1
    return {k.replace("-", "_"): v for k, v in hps.items() if k not in IGNORED}


def dataset_dirs(channel: Path) -> list[Path]:
    if not channel.is_dir():
        raise FileNotFoundError(f"training channel {channel} does not exist")
    subs = sorted(d for d in channel.iterdir() if d.is_dir() and any(d.glob("*.csv")))
    if subs:
        return subs
    if any(channel.glob("*.csv")):
        return [channel]
    raise FileNotFoundError(f"training channel {channel} holds no <dataset>/*.csv")


#: what the code needs (pyproject's requires-python) and the oldest SageMaker TensorFlow image for such a
#: Python: the images are py310 up to TensorFlow 2.18 and py312 from 2.19 (cloud/retrain/start.py
#: TRAINING_IMAGE_PATTERN, cloud/template.yaml TrainingImageUri refuse older ones before a job starts)
MIN_PYTHON = (3, 11)
MIN_TENSORFLOW = (2, 19)


def _tensorflow_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_runtime(python: tuple[int, ...] | None = None, tensorflow: str | None = None) -> None:
    """Refuse, with a message saying which image to use, an image whose Python or TensorFlow is too old."""
    python = tuple(sys.version_info[:2]) if python is None else python
    tensorflow = _tensorflow_version() if tensorflow is None else tensorflow
    problems = []
    if python[:2] < MIN_PYTHON:
        problems.append(f"Python {'.'.join(map(str, python[:2]))} (needs >= {'.'.join(map(str, MIN_PYTHON))})")
    if tensorflow is not None:
        parts = tuple(int(p) for p in tensorflow.split(".")[:2] if p.isdigit())
        if parts < MIN_TENSORFLOW:
            problems.append(f"TensorFlow {tensorflow} (needs >= {'.'.join(map(str, MIN_TENSORFLOW))})")
    if problems:
        raise SystemExit(
            f"this training image has {' and '.join(problems)}; use a SageMaker TensorFlow >= 2.19 py312 "
            "image (tensorflow-training:2.19.0-cpu-py312 or later)"
        )


def main(argv: list[str] | None = None) -> int:
    check_runtime()
    from ml.train import train
    from ml.train_config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    hps = parse_hyperparameters(argv, os.environ.get("SM_HPS"))
    channel = Path(os.environ.get("SM_CHANNEL_TRAIN", DEFAULT_CHANNEL))
    model_dir = Path(os.environ.get("SM_MODEL_DIR", DEFAULT_MODEL_DIR))
    output_dir = Path(os.environ.get("SM_OUTPUT_DATA_DIR", DEFAULT_OUTPUT_DIR))
    tiny = bool(hps.pop("tiny", False))
    unknown = sorted(set(hps) - set(TrainConfig.model_fields))
    if unknown:
        log.warning("ignoring unknown hyperparameters: %s", ", ".join(unknown))
        for k in unknown:
            hps.pop(k)
    cfg = TrainConfig.tiny_preset(**hps) if tiny else TrainConfig(**hps)
    dirs = dataset_dirs(channel)
    log.info("training on %s -> %s (report %s)", [d.name for d in dirs], model_dir, output_dir)
    result = train(dirs, model_dir, cfg, report_dir=output_dir)
    for ds, d in result.metrics.get("datasets", {}).items():
        for method, mm in d["methods"].items():
            v = mm["all"]["horizon_rmse_pp"]
            if v is not None:
                print(f"held_out_{ds}_{method}_rmse_pp={v:.4f}")
    print(f"model_version={result.model_file.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
