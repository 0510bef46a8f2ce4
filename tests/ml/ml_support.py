"""Paths and helpers of the ml tests (importable as ``tests.ml.ml_support``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import DATA, IN_CI, REPO, require_module

CELLS = DATA / "cells"
SHIPPED_MODEL = REPO / "device_agent" / "health" / "shipped_model"
SHIPPED_REPORT = REPO / "components" / "com.battwin.SohModel" / "report"
#: small real subsets for the tiny training run: NASA cells with zeros (B0045), NaNs (B0050), a cold
#: excursion (B0042) and clean ones, plus a few XJTU cells
TINY_NASA = ("B0025", "B0029", "B0042", "B0045", "B0046", "B0047", "B0050", "B0054", "B0055", "B0056")
TINY_XJTU = (
    "XJTU_2C_battery-1",
    "XJTU_2C_battery-2",
    "XJTU_3C_battery-1",
    "XJTU_3C_battery-2",
    "XJTU_R2.5_battery-1",
    "XJTU_R3_battery-1",
)


def need_cells() -> None:
    if not (CELLS / "nasa").is_dir():
        if IN_CI:
            pytest.fail(f"shared data missing at {CELLS}")
        pytest.skip(f"shared data not found at {CELLS}")


def need_tensorflow() -> None:
    require_module("tensorflow", reason="tensorflow is not installed (pip install -e '.[ml]')")


def copy_cells(dst: Path, dataset: str, names: tuple[str, ...], folder: str | None = None) -> Path:
    d = dst / (folder or dataset)
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copyfile(CELLS / dataset / f"{n}.csv", d / f"{n}.csv")
    return d
