"""Where the model the device ships with lives (the ``com.battwin.SohModel`` component's files).

Under Greengrass the agent is told the component's artifact path (``--model-dir``). Run from a checkout or
an install next to it, the agent finds the shipped model here by itself.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_REL = Path("components") / "com.battwin.SohModel" / "model"
MODEL_ENV = "BATTWIN_SHIPPED_MODEL_DIR"


def shipped_model_dir() -> Path | None:
    env = os.environ.get(MODEL_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / MODEL_REL)
    for c in candidates:
        if (c / "model.json").is_file() and (c / "model.tflite").is_file():
            return c
    return None
