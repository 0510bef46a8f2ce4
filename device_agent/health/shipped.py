"""Where the model the device ships with lives: ``shipped_model/`` next to this module.

The model files (``model.tflite`` + ``model.json``) are package data of ``device_agent.health``: a checkout,
the Greengrass agent artifact and a wheel install (``pip install battwin[device]``) all carry them, and the
``com.battwin.SohModel`` component is built from the same folder (components/build.py). It is the agent's
last resort when no model under ``health.model_root`` passes its checks (see model_manager).
``$BATTWIN_SHIPPED_MODEL_DIR`` names another folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from device_agent.health.model_files import MODEL_JSON, MODEL_TFLITE

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "shipped_model"
MODEL_ENV = "BATTWIN_SHIPPED_MODEL_DIR"


def shipped_model_dir() -> Path | None:
    """The shipped model's folder, or None if its files are missing (e.g. a build that left them out)."""
    env = os.environ.get(MODEL_ENV)
    candidate = Path(env) if env else SHIPPED_MODEL_DIR
    if (candidate / MODEL_JSON).is_file() and (candidate / MODEL_TFLITE).is_file():
        return candidate
    return None
