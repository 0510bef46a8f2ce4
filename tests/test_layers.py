"""Imports point one way: schema ← hardware ← device_agent ← {ml, cloud}; dev tools (devkit) may import
anything, and nothing that ships imports them (nor ml or cloud).

Every ``import`` in every .py file of the layers is read with ``ast`` — at module level, inside functions and
classes, and inside ``if TYPE_CHECKING:`` blocks too (a type-only import still makes the lower layer need the
upper one to be type-checked, so it counts). Relative imports are resolved against the importing module.
A second rule: no importing a private name (``_x``, or a ``_module``) from another top-level package.

The checker is also run on small synthetic trees (a positive control: an upward import is reported, with its
file and line) so that this test cannot pass by reading nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: top-level package → rank; a module may import its own rank or lower (None: devkit, may import anything)
RANKS: dict[str, int | None] = {
    "schema": 0,
    "hardware": 1,
    "device_agent": 2,
    "ml": 3,
    "cloud": 3,
    # tools that never ship: the dev kit, the benchmarks, the Greengrass component builder
    "devkit": None,
    "bench": None,
    "components": None,
}
#: same-rank packages that may import each other: none today (ml and cloud are independent)
SAME_RANK_ALLOWED: frozenset[tuple[str, str]] = frozenset()
#: modules that count as devkit (the dev tools' package)
DEVKIT_PREFIXES = ("devkit",)
#: the layers that ship to a device: they may not import these at any rank
SHIPPED = frozenset({"schema", "hardware", "device_agent"})
NOT_FROM_SHIPPED = frozenset({"devkit", "bench", "components", "ml", "cloud"})
#: imports exempted while other work of issue #14 was under way: none left (the CLI reaches the demo through
#: the ``battwin.cli`` entry points now that it is in devkit)
TRANSITIONAL: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}: {self.why}"


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not one of ours, e.g. pydantic)."""
    if any(_matches(module, p) for p in DEVKIT_PREFIXES):
        return "devkit"
    top = module.split(".", 1)[0]
    return top if top in RANKS else None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import statement anywhere in the tree."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check_tree(
    root: Path, packages: tuple[str, ...] = tuple(RANKS), allowed: frozenset[tuple[str, str]] = frozenset()
) -> tuple[list[Violation], int]:
    """Every violation under ``root``'s layer packages (but those ``allowed`` as (importer, imported)), and
    how many imports of our own modules were read."""
    violations: list[Violation] = []
    checked = 0
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            module = module_name(root, path)
            src_layer = layer_of(module)
            assert src_layer is not None, module
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for line, target, names in _imports(tree, module, path.name == "__init__.py"):
                dst_layer = layer_of(target)
                if dst_layer is None:
                    continue
                checked += 1
                if (module, target) in allowed:
                    continue

                def fail(why: str, line: int = line, target: str = target) -> None:
                    violations.append(Violation(rel, line, module, target, why))

                if src_layer in SHIPPED and dst_layer in NOT_FROM_SHIPPED:
                    fail(f"{src_layer} ships to the device and may not import {dst_layer}")
                else:
                    src_rank, dst_rank = RANKS[src_layer], RANKS[dst_layer]
                    if src_rank is not None and dst_rank is not None and src_layer != dst_layer:
                        if dst_rank > src_rank:
                            fail(f"upward: {src_layer} (rank {src_rank}) below {dst_layer} (rank {dst_rank})")
                        elif dst_rank == src_rank and (src_layer, dst_layer) not in SAME_RANK_ALLOWED:
                            fail(f"sideways: {src_layer} and {dst_layer} are independent layers")
                if target.split(".", 1)[0] != module.split(".", 1)[0]:
                    private = [p for p in target.split(".") if _private(p)] + [n for n in names if _private(n)]
                    if private:
                        fail(f"private name(s) {', '.join(private)} from another package")
    return violations, checked


def test_the_layers_import_one_way() -> None:
    violations, checked = check_tree(REPO, allowed=TRANSITIONAL)
    assert checked > 300, f"only {checked} imports of our own modules read: is the walk looking at the code?"
    assert not violations, "imports against the layers:\n" + "\n".join(map(str, violations))


def test_every_layer_package_is_walked() -> None:
    """The packages this test knows are the top-level packages of the project that hold Python code (a new
    top-level package must be given a rank here)."""
    present = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert {"schema", "hardware", "device_agent", "ml", "cloud"} <= present
    assert present <= set(RANKS), f"top-level packages without a rank: {sorted(present - set(RANKS))}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in {Path(rel).parts[0] for rel in files}:
        for folder in [root / package, *(p for p in (root / package).rglob("*") if p.is_dir())]:
            (folder / "__init__.py").touch()


def test_the_checker_reports_upward_sideways_devkit_and_private_imports(tmp_path: Path) -> None:
    """Positive control on a synthetic tree: each kind of bad import is reported at its file and line."""
    _write(
        tmp_path,
        {
            "schema/wire.py": "import json\n\nfrom hardware.source import Source\n",
            "hardware/drv.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from device_agent.config import AgentConfig\n"
                "def create():\n"
                "    from devkit.bms_emulators import jbd\n"
                "    return jbd\n"
            ),
            "hardware/ok.py": "from schema.wire import Envelope\nfrom .drv import create\n",
            "device_agent/agent.py": "from devkit.demo import run\nfrom ml.report import render\n",
            "devkit/nucleus/server.py": "from cloud.aws import client\n",  # devkit may import anything
            "ml/train.py": "from . import report\nfrom cloud.lake import _keys\n",
            "ml/report.py": "from hardware.sbs.pec import _crc8\nimport device_agent._internal\n",
            "cloud/api.py": "from ..ml import train\n",
        },
    )
    violations, _ = check_tree(tmp_path)
    found = {(v.path, v.line, v.imported): v.why for v in violations}
    assert set(found) == {
        ("schema/wire.py", 3, "hardware.source"),
        ("hardware/drv.py", 3, "device_agent.config"),
        ("hardware/drv.py", 5, "devkit.bms_emulators"),
        ("device_agent/agent.py", 1, "devkit.demo"),
        ("device_agent/agent.py", 2, "ml.report"),
        ("ml/train.py", 2, "cloud.lake"),
        ("ml/report.py", 1, "hardware.sbs.pec"),
        ("ml/report.py", 2, "device_agent._internal"),
        ("cloud/api.py", 1, "ml"),
    }, "\n".join(map(str, violations))
    assert found[("schema/wire.py", 3, "hardware.source")].startswith("upward")
    assert "may not import devkit" in found[("hardware/drv.py", 5, "devkit.bms_emulators")]
    assert "may not import ml" in found[("device_agent/agent.py", 2, "ml.report")]
    assert "_crc8" in found[("ml/report.py", 1, "hardware.sbs.pec")]
    assert "_internal" in found[("ml/report.py", 2, "device_agent._internal")]
    # ml/train.py line 2 is both sideways and private: both are reported
    assert sum(1 for v in violations if (v.path, v.line) == ("ml/train.py", 2)) == 2
    assert str(violations[0]).startswith(f"{violations[0].path}:{violations[0].line}: ")


@pytest.mark.parametrize(
    ("files", "clean"),
    [
        ({"hardware/a.py": "from schema.messages import Sample\n"}, True),
        ({"hardware/a.py": "def f():\n    import device_agent.runtime\n"}, False),
        ({"devkit/demo.py": "from cloud.aws import client\nfrom hardware.sbs.pec import _crc8\n"}, False),
        ({"devkit/demo.py": "from cloud.aws import client\nfrom ml.train import main\n"}, True),
    ],
)
def test_the_checker_on_single_imports(tmp_path: Path, files: dict[str, str], clean: bool) -> None:
    _write(tmp_path, files)
    violations, checked = check_tree(tmp_path)
    assert checked >= 1
    assert (not violations) is clean, violations
