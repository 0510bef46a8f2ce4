"""The challenger a finished training job offers: its model files from ``model.tar.gz`` (checked against
``model.json``) and its score (a metric path in ``model.json`` or the job's final metrics)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MODEL_TFLITE = "model.tflite"
MODEL_JSON = "model.json"
DEFAULT_METRIC = "held_out.*.hybrid.all.horizon_rmse_pp"
#: the job's final metrics the judge falls back to (``ml/sagemaker_entry.py`` prints them)
FINAL_METRIC = re.compile(r"held_out_.+_hybrid_rmse_pp")
MAX_MODEL_BYTES = 256 * 1024 * 1024


class ModelError(ValueError):
    """The training output is not a usable model (→ decision ``rejected``)."""


@dataclass(frozen=True)
class Challenger:
    job_name: str
    model_json: dict[str, Any]
    tflite: bytes
    score: float | None
    score_source: str


def metric_value(metrics: dict[str, Any], path: str) -> float | None:
    """``a.*.c`` on a nested dict; ``*`` averages over every key that has the rest of the path."""

    def walk(node: Any, parts: list[str]) -> list[float]:
        if not parts:
            if isinstance(node, int | float) and not isinstance(node, bool) and math.isfinite(node):
                return [float(node)]
            return []
        head, rest = parts[0], parts[1:]
        if not isinstance(node, dict):
            return []
        if head == "*":
            vals: list[float] = []
            for child in node.values():
                found = walk(child, rest)
                if found:
                    vals.append(sum(found) / len(found))
            return vals
        return walk(node[head], rest) if head in node else []

    found = walk(metrics, path.split("."))
    return sum(found) / len(found) if found else None


def read_model_tar(data: bytes) -> tuple[dict[str, Any], bytes]:
    """model.tar.gz (SageMaker's archive of SM_MODEL_DIR) → (model.json, model.tflite bytes)."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name not in (MODEL_TFLITE, MODEL_JSON) or name in files:
                    continue
                if member.size > MAX_MODEL_BYTES:
                    raise ModelError(f"{member.name} is {member.size} bytes")
                fh = tar.extractfile(member)
                if fh is not None:
                    files[name] = fh.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ModelError(f"model archive unreadable: {type(exc).__name__}: {exc}") from None
    missing = [n for n in (MODEL_TFLITE, MODEL_JSON) if n not in files]
    if missing:
        raise ModelError(f"model archive lacks {missing}")
    try:
        model_json = json.loads(files[MODEL_JSON])
    except ValueError as exc:
        raise ModelError(f"model.json is not JSON: {exc}") from None
    if not isinstance(model_json, dict):
        raise ModelError("model.json is not an object")
    want = model_json.get("tflite_sha256")
    if want and hashlib.sha256(files[MODEL_TFLITE]).hexdigest() != want:
        raise ModelError("model.tflite does not match model.json's tflite_sha256")
    return model_json, files[MODEL_TFLITE]


def split_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise ModelError(f"not an S3 object URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")
