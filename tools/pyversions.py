"""Run the device path and the cloud handlers' tests on other Pythons (``make pyversions``).

For each version (3.12 and 3.13 by default) a venv ``.venv-<version>`` is made with that interpreter (found on
PATH, or through pyenv), filled from ``requirements/dev.lock`` — hashes checked, wheels only — with just the
packages these tests need (the device's and the cloud handlers' dependencies and the test tools, each with what
it depends on as the lock's ``# via`` lines say; not TensorFlow, matplotlib, Playwright or the linters), and the
project is installed into it in editable mode. Then pytest runs the selection below. A venv is reused; when the
subset of the lock changed, pip brings it up to date (``--recreate`` makes it anew). Prints how long the install
and the tests took per version.

Usage: ``python tools/pyversions.py [--versions 3.12 3.13] [--recreate] [-- extra pytest arguments]``.
Stdlib only: it runs with any of the interpreters.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "dev.lock"
DEFAULT_VERSIONS = ("3.12", "3.13")

#: what the selected tests import, besides the project (dependencies of these come from the lock's ``# via``)
ROOTS = (
    # the project's own and the device's dependencies (pyproject: dependencies, device, litert)
    "pydantic",
    "pydantic-settings",
    "numpy",
    "awsiotsdk",
    "awscrt",
    "pyserial",
    "smbus2",
    "pymodbus",
    "pyyaml",
    "ai-edge-litert",
    # BLE packs (the ble extra, Python >= 3.12 only: its lock entries carry the marker, pip skips them elsewhere)
    "aiobmsble",
    # the cloud handlers (boto3 is what the Lambda runtime provides) and the AWS they are tested against
    "boto3",
    "moto",
    "cfn-lint",
    # the test tools
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "paho-mqtt",
    "amqtt",  # the embedded broker the end-to-end tests also run against
    "cryptography",
    "jsonschema",
    "psutil",
    "packaging",
    # to install the project itself (editable, without build isolation)
    "setuptools",
    "wheel",
)

#: the device path (agent, Greengrass IPC against the emulator, hardware drivers and emulators) and the cloud
#: handlers (their quick tier and the slow tests marked ``every_python``); not ml/ (TensorFlow training) nor the
#: dashboard (a browser) nor the lock check (a partial venv)
TESTS = (
    "tests",
    "--ignore=tests/ml",
    "--ignore=tests/dashboard",
    "--ignore=tests/test_locks.py",
    # the local retraining loop runs the TensorFlow training job (the ml extra, not in these venvs)
    "--ignore=tests/cloud/test_local_retrain_loop.py",
    # a minute of load that measures the machine rather than the Python (make test runs it)
    "--ignore=tests/reliability/test_soak.py",
    # the quick tier (`make quick`'s selection) and the slow tests marked every_python: the slow ones are longer
    # runs of the same code paths, which `make test` runs in full on 3.11; what differs between Pythons shows in
    # the quick tier, which starts every real component once (tests/test_tiers.py). Keeps .ci/run well inside
    # its time on a slower 2-core machine (the full selection took 14 min per version here, ~21 min there).
    "-m",
    "not slow or every_python",
)

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class _Block:
    name: str
    text: list[str]
    via: set[str] = field(default_factory=set)


def _blocks(lock_text: str) -> list[_Block]:
    """The lock's entries: the requirement line with its hashes, and who needs it (``# via``)."""
    blocks: list[_Block] = []
    in_via = False
    for line in lock_text.splitlines():
        m = _ENTRY.match(line)
        if m:
            blocks.append(_Block(_canon(m["name"]), [line]))
            in_via = False
            continue
        if not blocks:
            continue
        stripped = line.strip()
        if stripped.startswith("--hash="):
            blocks[-1].text.append(line)
        elif stripped.startswith("# via"):
            in_via = True
            rest = stripped[len("# via") :].strip()
            if rest:
                blocks[-1].via.add(_canon(rest.split()[0]))
        elif in_via and stripped.startswith("#"):
            parent = stripped.lstrip("#").strip()
            if parent:
                blocks[-1].via.add(_canon(parent.split()[0]))
    return blocks


def subset(lock_text: str, roots: tuple[str, ...] = ROOTS) -> str:
    """The part of the lock that ``roots`` need: the roots and, transitively, every entry one of them needs."""
    blocks = _blocks(lock_text)
    known = {b.name for b in blocks}
    missing = sorted({_canon(r) for r in roots} - known)
    if missing:
        raise SystemExit(f"not in {LOCK.name}: {', '.join(missing)}")
    wanted = {_canon(r) for r in roots}
    grew = True
    while grew:
        grew = False
        for b in blocks:
            if b.name not in wanted and b.via & wanted:
                wanted.add(b.name)
                grew = True
    kept = [line for b in blocks if b.name in wanted for line in b.text]
    return "\n".join(kept) + "\n"


def find_python(version: str) -> Path:
    """An interpreter of ``version`` (``3.12``): ``python3.12`` on PATH, else the newest pyenv install of it."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    exe = shutil.which(f"python{version}")
    if exe:
        done = subprocess.run([exe, "-c", probe], capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode == 0 and done.stdout.strip() == version:
            return Path(exe)
    if shutil.which("pyenv"):
        pyenv = shutil.which("pyenv") or "pyenv"
        latest = subprocess.run([pyenv, "latest", version], capture_output=True, text=True, check=False)  # noqa: S603
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)  # noqa: S603
        if latest.returncode == 0 and root.returncode == 0:
            path = Path(root.stdout.strip()) / "versions" / latest.stdout.strip() / "bin" / f"python{version}"
            if path.is_file():
                return path
    raise SystemExit(f"no Python {version}: neither python{version} on PATH nor a pyenv install of it")


def _run(cmd: list[str | Path]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO)  # noqa: S603


def prepare(version: str, recreate: bool) -> tuple[Path, float]:
    """The venv for ``version``, made or refreshed; returns its python and the seconds it took."""
    start = time.monotonic()
    venv = REPO / f".venv-{version}"
    reqs = subset(LOCK.read_text())
    stamp_text = hashlib.sha256((reqs + (REPO / "pyproject.toml").read_text()).encode()).hexdigest()
    stamp = venv / ".installed"
    py = venv / "bin" / "python"
    if recreate or not stamp.is_file() or stamp.read_text() != stamp_text or not py.is_file():
        if recreate or not py.is_file():  # else pip brings the venv to the subset (what is there stays)
            shutil.rmtree(venv, ignore_errors=True)
            _run([find_python(version), "-m", "venv", venv])
        (venv / "requirements.txt").write_text(reqs)
        pip: list[str | Path] = [py, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
        _run([*pip, "--require-hashes", "--only-binary=:all:", "-r", venv / "requirements.txt"])
        _run([*pip, "--no-deps", "--no-build-isolation", "-e", "."])
        stamp.write_text(stamp_text)
    return py, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS))
    parser.add_argument("--recreate", action="store_true", help="make the venvs anew")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = parser.parse_args(argv)
    results: list[tuple[str, float, float, int]] = []
    for version in args.versions:
        py, install_s = prepare(version, args.recreate)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.monotonic()
        cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *args.pytest_args]
        print("+", " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode  # noqa: S603
        results.append((version, install_s, time.monotonic() - start, code))
    print("\nPython  install(s)  tests(s)  result")
    for version, install_s, test_s, code in results:
        print(f"{version:<7} {install_s:>10.0f} {test_s:>9.0f}  {'passed' if code == 0 else f'FAILED ({code})'}")
    return 0 if all(r[3] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
