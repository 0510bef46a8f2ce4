"""Create the device agent's virtual environment from the locked requirements (stdlib only).

Run as a plain script by the Greengrass Install step (and by hand on a device)::

    python3 <app>/device_agent/bootstrap.py --app <app> --venv <venv>

``<app>`` is the unpacked agent artifact folder holding ``requirements/device.lock`` (64-bit Python: with the
LiteRT runtime) and ``requirements/device-32bit.lock`` (without it). Exit code 0 means the venv is ready; any
failure exits non-zero with a one-line reason on stderr.

Which lock: decided by the word size of the interpreter that runs this script, never by ``platform.machine()``:
32-bit Raspberry Pi OS on a Pi 4/5 boots a 64-bit kernel and reports ``aarch64`` while its Python is armv7l, for
which ai-edge-litert has no wheel.

How it installs:
- 64-bit: pip from the lock first, then the whole lock with ``--require-hashes --only-binary=:all:``.
- 32-bit: PyPI has no armv7l wheels of numpy, awscrt, pyyaml, psutil or cffi; Raspberry Pi OS gets them from
  piwheels.org (its /etc/pip.conf adds that index), whose files have other hashes than PyPI's. So the same pinned
  versions are installed WITHOUT hashes and source builds are allowed (``--prefer-binary``), and the log says so.

Idempotent: the venv holds a stamp with the lock's sha256; the same lock on the same interpreter does nothing, a
changed lock rebuilds the venv from scratch.

This file must stay importable and runnable without the rest of the package (it runs before anything is
installed), and parseable by older Pythons so that they get the version message instead of a SyntaxError.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import venv
from pathlib import Path

MIN_PYTHON = (3, 11)
LOCK_64 = "requirements/device.lock"
LOCK_32 = "requirements/device-32bit.lock"
STAMP_NAME = "battwin-bootstrap.json"
PIWHEELS = "piwheels.org"
PIP_CONF_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf")

log = logging.getLogger("battwin.bootstrap")


class BootstrapError(Exception):
    """A failure with a one-line reason for the operator."""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, separators=(",", ":"))


# -- decisions (pure; unit-tested) -----------------------------------------------------------------------------
class Plan:
    """What to install: which lock, and whether hashes are checked and only wheels accepted."""

    def __init__(self, lock: str, hashed: bool, reason: str) -> None:
        self.lock = lock
        self.hashed = hashed  # True: --require-hashes --only-binary=:all:; False: pins only, sources allowed
        self.reason = reason

    def __repr__(self) -> str:
        return f"Plan(lock={self.lock!r}, hashed={self.hashed!r})"


def python_problem(version: tuple[int, ...]) -> str | None:
    """The reason this interpreter cannot run the agent, or None."""
    if tuple(version[:2]) < MIN_PYTHON:
        have = ".".join(str(v) for v in version[:3])
        need = ".".join(str(v) for v in MIN_PYTHON)
        return f"Python {need} or newer is needed, this is Python {have} ({sys.executable})"
    return None


def choose_plan(pointer_size: int, machine: str) -> Plan:
    """Pick the lock by the interpreter's word size (``struct.calcsize("P")``); ``machine`` only explains it."""
    if pointer_size == 8:
        return Plan(LOCK_64, hashed=True, reason=f"64-bit Python on {machine}: LiteRT included, hashes checked")
    if pointer_size == 4:
        kernel = " (on a 64-bit kernel)" if machine in ("aarch64", "arm64", "x86_64", "amd64") else ""
        return Plan(
            LOCK_32,
            hashed=False,
            reason=(
                f"32-bit Python{kernel}, machine {machine}: no LiteRT (physics model only); PyPI has no armv7l "
                "wheels of numpy/awscrt/pyyaml/psutil/cffi, so the pinned versions are installed WITHOUT hashes "
                "from the configured indexes (piwheels.org on Raspberry Pi OS), source builds allowed"
            ),
        )
    raise BootstrapError(f"unsupported interpreter word size {pointer_size * 8} bits")


class LockEntry:
    """One requirement of a lock file: ``name==version[ ; marker]`` and its hashes."""

    def __init__(self, requirement: str, hashes: tuple[str, ...]) -> None:
        self.requirement = requirement
        self.hashes = hashes

    @property
    def name(self) -> str:
        head = self.requirement.split(";", 1)[0]
        for sep in ("==", ">=", "<=", "~=", "!=", "<", ">", "[", " "):
            head = head.split(sep, 1)[0]
        return head.strip().lower().replace("_", "-")

    def render(self, with_hashes: bool) -> str:
        if with_hashes and self.hashes:
            return " \\\n    ".join([self.requirement] + [f"--hash={h}" for h in self.hashes])
        return self.requirement


def parse_lock(text: str) -> list[LockEntry]:
    """Parse a pip-compile/uv style lock: requirements with ``--hash=`` options, ``\\`` continuations, comments."""
    entries: list[LockEntry] = []
    logical: list[str] = []
    for raw in [*text.splitlines(), ""]:
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            logical.append(line[:-1].strip())
            continue
        logical.append(line.strip())
        joined = " ".join(part for part in logical if part)
        logical = []
        if not joined:
            continue
        tokens = joined.split()
        hashes = tuple(t.split("=", 1)[1] for t in tokens if t.startswith("--hash="))
        requirement = " ".join(t for t in tokens if not t.startswith("--hash="))
        if requirement.startswith("-"):
            raise BootstrapError(f"unexpected option in the lock: {requirement!r}")
        if "==" not in requirement:
            raise BootstrapError(f"lock entry is not pinned with ==: {requirement!r}")
        entries.append(LockEntry(requirement, hashes))
    return entries


def render_requirements(entries: list[LockEntry], with_hashes: bool) -> str:
    if with_hashes:
        unhashed = [e.requirement for e in entries if not e.hashes]
        if unhashed:
            raise BootstrapError(f"lock entries without hashes: {', '.join(unhashed)}")
    return "".join(e.render(with_hashes) + "\n" for e in entries)


def split_pip(entries: list[LockEntry]) -> tuple[list[LockEntry], list[LockEntry]]:
    """(the pip entries, everything else): pip is installed first, from the lock."""
    pip = [e for e in entries if e.name == "pip"]
    if not pip:
        raise BootstrapError("the lock does not pin pip")
    return pip, [e for e in entries if e.name != "pip"]


def stamp_for(lock_text: bytes, plan: Plan, version: str, executable: str) -> dict[str, str]:
    return {
        "lock": plan.lock,
        "sha256": hashlib.sha256(lock_text).hexdigest(),
        "hashed": "yes" if plan.hashed else "no",
        "python": version,
        "executable": executable,
    }


def read_stamp(venv_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((venv_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(venv_dir: Path, wanted: dict[str, str]) -> bool:
    """True when the venv was built from exactly this lock by this interpreter and still has its Python."""
    return read_stamp(venv_dir) == wanted and venv_python(venv_dir).exists()


def piwheels_configured(env: dict[str, str], conf_files: tuple[str, ...] = PIP_CONF_FILES) -> bool:
    if any(PIWHEELS in env.get(k, "") for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")):
        return True
    for name in conf_files:
        try:
            if PIWHEELS in Path(name).read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


# -- actions ---------------------------------------------------------------------------------------------------
def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def create_venv(venv_dir: Path) -> None:
    if venv_dir.exists() and any(venv_dir.iterdir()) and not _is_venv(venv_dir):
        raise BootstrapError(f"refusing to replace {venv_dir}: it is not empty and not a virtual environment")
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(str(venv_dir))
    except (subprocess.CalledProcessError, OSError) as exc:
        raise BootstrapError(
            f"could not create the venv {venv_dir} ({exc}); on Debian / Raspberry Pi OS: apt-get install python3-venv"
        ) from exc


def pip_install(venv_dir: Path, requirements: str, hashed: bool, what: str) -> None:
    req_file = venv_dir / f"battwin-{what}.txt"
    req_file.write_text(requirements, encoding="utf-8")
    cmd = [str(venv_python(venv_dir)), "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    cmd += ["--disable-pip-version-check"]
    cmd += ["--require-hashes", "--only-binary=:all:"] if hashed else ["--prefer-binary"]
    cmd += ["-r", str(req_file)]
    log.info("pip install", extra={"fields": {"what": what, "hashed": hashed}})
    started = time.monotonic()
    result = subprocess.run(cmd, check=False)  # noqa: S603 (our own venv's pip, arguments built here)
    if result.returncode != 0:
        raise BootstrapError(f"pip install of {what} failed (exit {result.returncode}); see pip's output above")
    log.info("pip install done", extra={"fields": {"what": what, "seconds": round(time.monotonic() - started, 1)}})


def bootstrap(app: Path, venv_dir: Path, force: bool = False) -> bool:
    """Make ``venv_dir`` match the lock for this interpreter. Returns False when it already did (nothing done)."""
    problem = python_problem(tuple(sys.version_info[:3]))
    if problem:
        raise BootstrapError(problem)
    plan = choose_plan(struct.calcsize("P"), platform.machine())
    lock_path = app / plan.lock
    try:
        lock_text = lock_path.read_bytes()
    except OSError as exc:
        raise BootstrapError(f"cannot read the lock {lock_path}: {exc.strerror or exc}") from exc
    try:
        entries = parse_lock(lock_text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BootstrapError(f"the lock {lock_path} is not UTF-8 text") from exc
    pip_entries, rest = split_pip(entries)
    pip_reqs = render_requirements(pip_entries, plan.hashed)
    reqs = render_requirements(rest, plan.hashed)
    wanted = stamp_for(lock_text, plan, platform.python_version(), sys.executable)
    log.info(plan.reason, extra={"fields": {"lock": plan.lock, "venv": str(venv_dir)}})
    if not force and is_current(venv_dir, wanted):
        log.info("venv already built from this lock; nothing to do", extra={"fields": {"sha256": wanted["sha256"]}})
        return False
    if not plan.hashed and not piwheels_configured(dict(os.environ)):
        log.warning(
            "piwheels.org is not among pip's indexes: numpy, awscrt, pyyaml, psutil and cffi will be built from "
            "source (slow; needs a compiler and headers). On Raspberry Pi OS /etc/pip.conf adds "
            "extra-index-url=https://www.piwheels.org/simple"
        )
    log.info("building the venv", extra={"fields": {"previous": read_stamp(venv_dir), "wanted": wanted}})
    create_venv(venv_dir)
    pip_install(venv_dir, pip_reqs, plan.hashed, "pip")
    pip_install(venv_dir, reqs, plan.hashed, "requirements")
    (venv_dir / STAMP_NAME).write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
    log.info("venv ready", extra={"fields": {"venv": str(venv_dir)}})
    return True


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < MIN_PYTHON:  # before anything else: older Pythons get this line, not a traceback
        sys.stderr.write(f"battwin-bootstrap: {python_problem(tuple(sys.version_info[:3]))}\n")
        return 1
    parser = argparse.ArgumentParser(description="Create the battwin device venv from the locked requirements.")
    parser.add_argument("--app", type=Path, required=True, help="the unpacked agent artifact folder")
    parser.add_argument("--venv", type=Path, required=True, help="the virtual environment to create")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        bootstrap(args.app.resolve(), args.venv.absolute(), force=args.force)
    except BootstrapError as exc:
        sys.stderr.write(f"battwin-bootstrap: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("battwin-bootstrap: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
