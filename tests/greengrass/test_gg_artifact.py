"""What ships to a device: ``battwin-agent.zip`` holds the layers that run there (schema, hardware, device_agent)
and the device locks, no dev tool (nucleus emulator, BMS emulators, embedded broker, demo, local shadow service),
and every module in it imports from the artifact alone — nothing it needs was left behind in the repository."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from components import build
from tests.support import REPO

#: top-level entries a device artifact may have: the shipped layers and the locks the Install step reads
SHIPPED = {"schema", "hardware", "device_agent", "requirements"}
#: packages of this repository that must never be on a device
NOT_SHIPPED = ("devkit", "cloud", "ml", "tests", "bench", "tools", "components")
#: names of the dev tools (as modules or folders), wherever they would sit
DEV_TOOL_NAMES = {
    "devkit",
    "emulator",
    "emulators",
    "bms_emulators",
    "nucleus",
    "broker",
    "demo",
    "local_service",
    "local_shadow",
}

# Imports every module named on stdin from the extracted artifact only: the repository is off sys.path, the
# editable install's finder is removed and the repository's other packages are refused outright.
IMPORT_ALL = """
import importlib, importlib.abc, json, sys
root = sys.argv[1]
blocked = set(sys.argv[2].split(","))
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.path[:] = [root] + [p for p in sys.path if "/lib/python" in p]  # the stdlib and site-packages only

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not part of the device artifact")
        return None

sys.meta_path.insert(0, Refuse())
failed, outside = {}, {}
for name in json.loads(sys.stdin.read()):
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
        continue
    if not str(getattr(module, "__file__", "") or "").startswith(root):
        outside[name] = str(getattr(module, "__file__", None))
tops = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in blocked})
print(json.dumps({"failed": failed, "outside": outside, "blocked_loaded": tops}))
"""


def _artifact(tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "artifact"
    out.mkdir()
    zip_path = build.build_agent_zip(out)
    with zipfile.ZipFile(zip_path) as zf:
        return zip_path, zf.namelist()


def _modules(names: list[str]) -> list[str]:
    mods = []
    for name in names:
        path = PurePosixPath(name)
        if path.suffix != ".py":
            continue
        parts = path.with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(mods)


def test_the_artifact_lists_only_what_runs_on_a_device(tmp_path: Path) -> None:
    _, names = _artifact(tmp_path)
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops <= SHIPPED, f"not a device layer: {sorted(tops - SHIPPED)}"
    assert {"hardware", "device_agent", "requirements"} <= tops
    if (REPO / "schema").is_dir():  # the leaf layer, once the repository has it, ships too
        assert "schema" in tops
    dev_tools = [n for n in names if DEV_TOOL_NAMES & {PurePosixPath(n).stem, *PurePosixPath(n).parts[:-1]}]
    assert not dev_tools, f"dev tools in the device artifact: {dev_tools}"
    # the repository's dev tools exist and are what was left out (the check above is not vacuous)
    for tool in ("devkit/nucleus/server.py", "devkit/bms_emulators/jbd.py", "devkit/broker/embedded.py"):
        assert (REPO / tool).is_file()
    assert {"devkit/demo.py", "devkit/local_shadow.py"}.isdisjoint(names)
    # what a device runs is there
    for needed in ("device_agent/cli.py", "device_agent/bootstrap.py", "device_agent/greengrass/ipc_transport.py"):
        assert needed in names
    assert "requirements/device.lock" in names and "requirements/device-32bit.lock" in names


def test_every_module_of_the_artifact_imports_from_the_artifact_alone(tmp_path: Path) -> None:
    zip_path, names = _artifact(tmp_path)
    root = tmp_path / "device"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root)
    modules = _modules(names)
    assert len(modules) > 50 and "device_agent.runtime" in modules and "hardware.registry" in modules
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(root), ",".join(NOT_SHIPPED)],
        input=json.dumps(modules),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, result["failed"]
    assert result["outside"] == {}, f"imported from outside the artifact: {result['outside']}"
    assert result["blocked_loaded"] == []


def test_the_import_check_refuses_a_module_that_needs_a_dev_tool(tmp_path: Path) -> None:
    """Positive control: the same check, given a module that imports devkit, reports it."""
    root = tmp_path / "device"
    (root / "device_agent").mkdir(parents=True)
    (root / "device_agent" / "__init__.py").write_text("")
    (root / "device_agent" / "uses_devkit.py").write_text("import devkit.demo\n")
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(root), ",".join(NOT_SHIPPED)],
        input=json.dumps(["device_agent", "device_agent.uses_devkit"]),
        cwd=REPO,  # even from the repository's root, where devkit is importable otherwise
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result["failed"]) == ["device_agent.uses_devkit"]
    assert "not part of the device artifact" in result["failed"]["device_agent.uses_devkit"]
