"""JSON files of the reports: numpy numbers and non-finite floats written as plain JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(x: Any) -> Any:
    """``x`` with numpy numbers as Python numbers, NaN as null and ±inf as the strings "inf"/"-inf"."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        v = float(x)
        if math.isnan(v):
            return None
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=2) + "\n", encoding="utf-8")
