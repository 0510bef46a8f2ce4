"""What a device installs is pinned exactly, and nothing in it is a security smell ruff's S rules find."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.support import REPO


def test_device_dependencies_are_pinned_exactly():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    device = meta["dependencies"] + meta["optional-dependencies"]["device"]
    loose = [d for d in device if "==" not in d and not d.startswith(("numpy", "tomli", "pyyaml"))]
    assert not loose, f"device dependencies without an exact pin: {loose}"


def test_security_lint_is_clean_on_the_device_path():
    """ruff's flake8-bandit rules (S) are part of the project's lint selection and pass on the device code."""
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "S" in lint["select"]
    ignored_security = [c for c in lint["ignore"] if c.startswith("S")]
    assert set(ignored_security) <= {"S101", "S311"}, ignored_security  # asserts; non-crypto random (simulator)
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "device_agent", "hardware"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    security = [line for line in r.stdout.splitlines() if ": S" in line]
    assert not security, "\n".join(security)
