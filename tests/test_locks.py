"""Every environment installs from a lock: the locks must satisfy pyproject.toml, pin every package exactly
and carry hashes, and the device locks must agree with the development lock."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from device_agent.bootstrap import parse_lock
from tests.support import REPO

LOCKS = REPO / "requirements"
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def _entries(lock: Path) -> list[tuple[str, str, str | None, list[str]]]:
    """``(name, version, marker, hashes)`` for every package of a lock, read by the device's own lock parser
    (device_agent.bootstrap, what the Greengrass install step uses)."""
    out: list[tuple[str, str, str | None, list[str]]] = []
    for entry in parse_lock(lock.read_text()):
        req = Requirement(entry.requirement)
        (pin,) = req.specifier
        out.append(
            (canonicalize_name(req.name), pin.version, str(req.marker) if req.marker else None, list(entry.hashes))
        )
    return out


def _pins(lock: Path, python: str) -> dict[str, Version]:
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    env.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64")
    pins: dict[str, Version] = {}
    for name, version, marker, _ in _entries(lock):
        if marker is None or Requirement(f"x; {marker}").marker.evaluate(env):  # type: ignore[union-attr]
            assert name not in pins, f"{lock.name}: {name} pinned twice for Python {python}"
            pins[name] = Version(version)
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(*extras: str) -> list[Requirement]:
    meta = _project()
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return reqs


LOCK_EXTRAS = {
    "dev.lock": tuple(_project()["optional-dependencies"]),
    "device.lock": ("device", "litert", "ble"),
    "device-32bit.lock": ("device",),
    "demo.lock": ("device", "litert", "demo", "cloud"),
}
#: what the development environment has and `make demo` must not install (the 2.3 GB of it)
DEV_ONLY = ("tensorflow-cpu", "tensorflow", "playwright", "ruff", "mypy", "pytest", "hypothesis", "matplotlib")


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
@pytest.mark.parametrize("lock_name", sorted(LOCK_EXTRAS))
def test_lock_satisfies_pyproject(lock_name: str, python: str) -> None:
    pins = _pins(LOCKS / lock_name, python)
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    env.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64")
    for req in _requirements(*LOCK_EXTRAS[lock_name]):
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            assert canonicalize_name(req.name) not in pins, f"{lock_name}: {req} is locked for Python {python}"
            continue  # e.g. the ble extra's aiobmsble on Python 3.11
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock_name}: {req} is not locked for Python {python} (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock_name}: pyproject asks for {req}, the lock has {pins[name]} (run make lock)"
        )


@pytest.mark.parametrize("lock_name", sorted(LOCK_EXTRAS))
def test_every_locked_package_is_pinned_with_hashes(lock_name: str) -> None:
    entries = _entries(LOCKS / lock_name)
    assert len(entries) > 10
    unhashed = [name for name, _, _, hashes in entries if not hashes]
    assert not unhashed, f"{lock_name}: no hashes for {unhashed}"
    loose = [
        line
        for line in (LOCKS / lock_name).read_text().splitlines()
        if line and not line[0].isspace() and not line.startswith("#") and not ENTRY.match(line)
    ]
    assert not loose, f"{lock_name}: lines that are not exact pins: {loose}"


def test_device_locks_agree_with_the_development_lock() -> None:
    for python in ("3.11", "3.12", "3.13"):
        dev = _pins(LOCKS / "dev.lock", python)
        for lock_name in ("device.lock", "device-32bit.lock", "demo.lock"):
            for name, version in _pins(LOCKS / lock_name, python).items():
                if name in dev:
                    assert dev[name] == version, f"{lock_name} has {name} {version}, dev.lock {dev[name]}"


def test_device_locks_pin_pip_and_leave_out_dev_tools() -> None:
    device = _pins(LOCKS / "device.lock", "3.11")
    small = _pins(LOCKS / "device-32bit.lock", "3.11")
    assert "pip" in device and "pip" in small
    assert "ai-edge-litert" in device and "ai-edge-litert" not in small
    for tool in ("tensorflow-cpu", "boto3", "moto", "amqtt", "pytest"):
        assert tool not in device, f"{tool} would be installed on a device"


def test_the_demo_lock_has_what_the_full_demo_runs_and_no_dev_tools() -> None:
    for python in ("3.11", "3.12", "3.13"):
        demo = _pins(LOCKS / "demo.lock", python)
        # the agent (MQTT over awscrt, the shipped TFLite model), the embedded broker, the local AWS (moto server)
        # the ingest/API handlers use (boto3), the BMS emulator's serial link
        for needed in ("awscrt", "ai-edge-litert", "amqtt", "moto", "flask", "boto3", "pyserial", "setuptools"):
            assert needed in demo, f"demo.lock lacks {needed} for Python {python}"
        present = [tool for tool in DEV_ONLY if tool in demo]
        assert not present, f"demo.lock would install {present} for Python {python}"
    assert any(tool in _pins(LOCKS / "dev.lock", "3.11") for tool in DEV_ONLY)  # the names above are real ones


def _make_rule(target: str) -> str:
    """The prerequisites line and recipe of one Makefile rule."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:(.*\n(?:\t.*\n|.*\\\n)*)", text, re.MULTILINE)
    assert match, f"no rule {target} in the Makefile"
    return match.group(1)


def test_make_demo_installs_from_the_demo_lock_only() -> None:
    assert "$(DEMO_STAMP)" in _make_rule("demo").splitlines()[0]
    recipe = _make_rule("$(DEMO_STAMP)")
    installs = [line for line in recipe.splitlines() if " install " in line]
    assert len(installs) == 2, installs
    assert "--require-hashes --only-binary=:all: -r requirements/demo.lock" in installs[0]
    assert "--no-deps" in installs[1] and " -e ." in installs[1]
    assert "dev.lock" not in recipe


def test_make_lock_writes_every_lock() -> None:
    recipe = _make_rule("lock")
    for lock in sorted(p.name for p in LOCKS.glob("*.lock")):
        assert f"-o requirements/{lock}" in recipe, f"make lock does not regenerate {lock}"
    assert set(LOCK_EXTRAS) == {p.name for p in LOCKS.glob("*.lock")}


def test_the_installed_environment_is_the_locked_one() -> None:
    """What `make` installed is what dev.lock says (a stale venv or an unlocked install shows here)."""
    from importlib.metadata import distributions

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = _pins(LOCKS / "dev.lock", python)
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in distributions()}
    wrong = {n: (str(installed[n]), str(v)) for n, v in pins.items() if n in installed and installed[n] != v}
    missing = sorted(n for n in pins if n not in installed and n not in {"pip", "setuptools", "wheel"})
    assert not wrong, f"installed differs from dev.lock (installed, locked): {wrong}"
    assert not missing, f"locked but not installed: {missing}"


def test_pip_check_passes() -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
