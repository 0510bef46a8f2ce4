"""Fixtures of the ml tests: real cell files (copied subsets), the shipped model, a tiny trained model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ml.ml_support import SHIPPED_MODEL, TINY_NASA, TINY_XJTU, copy_cells, need_cells, need_tensorflow


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_cells()
    root = tmp_path_factory.mktemp("tiny-data")
    return copy_cells(root, "nasa", TINY_NASA), copy_cells(root, "xjtu", TINY_XJTU)


@pytest.fixture(scope="session")
def tiny_trained(
    tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, float]]:
    """``battwin ml train --tiny`` on the real subsets: (model dir, report dir, wall seconds)."""
    need_tensorflow()
    import time

    from ml.cli import main

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    report = out.parent / "report"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    rc = main(
        [
            "ml",
            "train",
            "--cells",
            str(tiny_data[0]),
            "--cells",
            str(tiny_data[1]),
            "--out",
            str(out),
            "--report",
            str(report),
            "--tiny",
            "--seed",
            "3",
        ]
    )
    elapsed = time.perf_counter() - t0
    assert rc == 0
    yield out, report, elapsed


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    if not (SHIPPED_MODEL / "model.json").is_file():
        pytest.fail(f"the shipped model is missing: {SHIPPED_MODEL} must hold model.tflite + model.json")
    return SHIPPED_MODEL


@pytest.fixture
def model_copy(shipped_model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(shipped_model_dir, d)
    return d
