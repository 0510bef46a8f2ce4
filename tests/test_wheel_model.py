"""The shipped health model travels with the package: a wheel-installed agent (outside Greengrass) finds it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from device_agent.health.model_files import sha256_file
from device_agent.health.shipped import SHIPPED_MODEL_DIR
from tests.support import REPO, require_module

pytestmark = pytest.mark.slow

#: what pyproject's package discovery needs to build the wheel
SOURCES = ("pyproject.toml", "README.md", "schema", "device_agent", "hardware", "ml", "cloud")

PROBE = """
import json, device_agent
from device_agent.health.shipped import shipped_model_dir
from device_agent.health.hybrid import load_hybrid_model
d = shipped_model_dir()
m = load_hybrid_model(d) if d is not None else None
print(json.dumps({"package": device_agent.__file__, "model_dir": str(d), "version": m and m.version}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:  # a copy, so the build's build/ and egg-info never land in the checkout
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        timeout=600,
    )
    (whl,) = out.glob("battwin-*.whl")
    return whl


def test_the_wheel_contains_the_shipped_model(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for f in ("model.tflite", "model.json"):
            arc = f"device_agent/health/shipped_model/{f}"
            assert arc in names, f"{arc} is not in {wheel.name}"
            assert zf.read(arc) == (SHIPPED_MODEL_DIR / f).read_bytes()


def test_an_installed_copy_finds_and_loads_the_shipped_model(wheel, tmp_path):
    require_module("ai_edge_litert")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=600,
    )
    env = {
        "PATH": "/usr/bin:/bin",
        # the installed copy first; the venv's site-packages only for the dependencies (numpy, pydantic, LiteRT)
        "PYTHONPATH": f"{target}:{sysconfig.get_paths()['purelib']}",
    }
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(target), found  # the wheel's copy, not the checkout
    model_dir = Path(found["model_dir"])
    assert model_dir == target / "device_agent" / "health" / "shipped_model"
    assert sha256_file(model_dir / "model.tflite") == sha256_file(SHIPPED_MODEL_DIR / "model.tflite")
    assert found["version"] == json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())["version"]
