"""`make quick` (the quick tier) still starts every real component: its pytest selection, taken from the Makefile,
collected in a subprocess, contains a test whose fixtures start each one (fixtures carry ``@real_component``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIER_REPORT_ENV
from tests.support import REAL_COMPONENTS, REPO


def quick_mark() -> str:
    """The marker expression of `make quick`, as the Makefile passes it to pytest."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^quick:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "the Makefile has no quick target"
    assert '-m "$(QUICK_MARK)"' in recipe.group(1), recipe.group(1)
    found = re.search(r"^QUICK_MARK\s*:?=\s*(.+)$", makefile, re.MULTILINE)
    assert found is not None, "the Makefile sets no QUICK_MARK"
    return found.group(1).strip()


def collect(tmp_path: Path, mark: str) -> dict[str, Any]:
    report = tmp_path / "tiers.json"
    env = {**os.environ, TIER_REPORT_ENV: str(report), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", mark, "tests"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return data


def users(items: dict[str, list[str]]) -> dict[str, list[str]]:
    return {c: sorted(n for n, used in items.items() if c in used) for c in REAL_COMPONENTS}


@pytest.mark.keep_quick("the tier check itself: collects the whole suite in a subprocess (5-45 s)")
def test_the_quick_tier_starts_every_real_component(tmp_path: Path) -> None:
    mark = quick_mark()
    assert mark == "not slow"
    report = collect(tmp_path, mark)
    # the complete suite: every component has a fixture marked @real_component that some test uses
    everywhere = users(report["collected"])
    assert all(everywhere.values()), {c: n for c, n in everywhere.items() if not n}
    # the quick tier leaves the slow tests out, and still keeps a user of each component
    selected = report["selected"]
    assert report["slow"] == [], report["slow"][:5]
    # a test kept in the quick tier on purpose is not also marked slow
    assert not set(report["keep_quick_slow"]), report["keep_quick_slow"]
    assert 0 < len(selected) < len(report["collected"])
    quick = users(selected)
    missing = sorted(c for c, nodes in quick.items() if not nodes)
    assert not missing, f"`make quick` ({mark!r}) starts none of: {missing}; slow users: " + str(
        {c: everywhere[c][:3] for c in missing}
    )
