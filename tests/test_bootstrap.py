"""device_agent/bootstrap.py: the lock chosen by the interpreter's word size, lock filtering, the stamp, the script.

The decision logic is tested directly; the script is run for real (as the Greengrass Install step runs it) for its
error paths, and, marked slow, into temporary venvs from PyPI: once from requirements/device.lock, once with a small
lock that changes (rebuild).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent import bootstrap as bs
from tests.support import IN_CI

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "device_agent" / "bootstrap.py"
DEVICE_LOCK = (REPO / "requirements" / "device.lock").read_text(encoding="utf-8")
DEVICE_32_LOCK = (REPO / "requirements" / "device-32bit.lock").read_text(encoding="utf-8")


def run_script(*args: str | Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900, check=False
    )


# -- which lock --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_a_64_bit_interpreter_gets_litert_with_hashes_and_wheels_only(machine: str) -> None:
    plan = bs.choose_plan(8, machine)
    assert plan.lock == "requirements/device.lock"
    assert plan.hashed


@pytest.mark.parametrize("machine", ["aarch64", "armv7l", "armv6l"])
def test_a_32_bit_interpreter_gets_the_32_bit_lock_even_on_a_64_bit_kernel(machine: str) -> None:
    # 32-bit Raspberry Pi OS on a Pi 4/5: the kernel says aarch64, the Python is armv7l
    plan = bs.choose_plan(4, machine)
    assert plan.lock == "requirements/device-32bit.lock"
    assert not plan.hashed  # piwheels' files have other hashes than PyPI's
    assert "piwheels" in plan.reason
    assert ("64-bit kernel" in plan.reason) == (machine == "aarch64")


def test_an_unknown_word_size_is_refused() -> None:
    with pytest.raises(bs.BootstrapError, match="16 bits"):
        bs.choose_plan(2, "msp430")


def test_the_python_version_check() -> None:
    assert bs.python_problem((3, 11, 0)) is None
    assert bs.python_problem((3, 13, 1)) is None
    problem = bs.python_problem((3, 10, 12))
    assert problem is not None
    assert "3.11 or newer" in problem
    assert "3.10.12" in problem


def test_the_two_repo_locks_parse_and_differ_only_by_litert() -> None:
    full = {e.name: e for e in bs.parse_lock(DEVICE_LOCK)}
    small = {e.name: e for e in bs.parse_lock(DEVICE_32_LOCK)}
    assert "ai-edge-litert" in full
    assert "ai-edge-litert" not in small
    for name in ("pip", "numpy", "pyyaml", "awscrt", "awsiotsdk", "pydantic"):
        assert name in small, name
        assert small[name].hashes, name
    assert set(small) <= set(full)


# -- lock filtering ----------------------------------------------------------------------------------------------
SAMPLE_LOCK = """\
# a header comment
annotated-types==0.8.0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via
    #   pydantic
colorama==0.4.6 ; sys_platform == 'win32' \\
    --hash=sha256:cccc
numpy==2.4.6 ; python_full_version < '3.12' \\
    --hash=sha256:dddd
numpy==2.5.5 ; python_full_version >= '3.12' \\
    --hash=sha256:eeee
pip==26.3 \\
    --hash=sha256:ffff
Typing_Extensions==4.16.0 \\
    --hash=sha256:1111  # trailing comment
"""


def test_lock_lines_keep_pins_and_markers_and_drop_hashes_and_comments() -> None:
    entries = bs.parse_lock(SAMPLE_LOCK)
    assert [e.requirement for e in entries] == [
        "annotated-types==0.8.0",
        "colorama==0.4.6 ; sys_platform == 'win32'",
        "numpy==2.4.6 ; python_full_version < '3.12'",
        "numpy==2.5.5 ; python_full_version >= '3.12'",
        "pip==26.3",
        "Typing_Extensions==4.16.0",
    ]
    assert entries[0].hashes == ("sha256:aaaa", "sha256:bbbb")
    assert entries[-1].name == "typing-extensions"
    plain = bs.render_requirements(entries, with_hashes=False)
    assert "--hash" not in plain
    assert "#" not in plain
    assert plain.splitlines()[2] == "numpy==2.4.6 ; python_full_version < '3.12'"


def test_hashed_rendering_parses_back_to_the_same_entries() -> None:
    entries = bs.parse_lock(DEVICE_LOCK)
    again = bs.parse_lock(bs.render_requirements(entries, with_hashes=True))
    assert [(e.requirement, e.hashes) for e in again] == [(e.requirement, e.hashes) for e in entries]


def test_pip_is_split_off_to_be_installed_first() -> None:
    pip, rest = bs.split_pip(bs.parse_lock(SAMPLE_LOCK))
    assert [e.requirement for e in pip] == ["pip==26.3"]
    assert "pip" not in {e.name for e in rest}
    assert len(rest) == 5
    with pytest.raises(bs.BootstrapError, match="does not pin pip"):
        bs.split_pip(bs.parse_lock("numpy==2.4.6 --hash=sha256:dddd\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy>=2\n", "not pinned"),
        ("-e git+https://example.invalid/x\n", "unexpected option"),
    ],
)
def test_a_malformed_lock_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(bs.BootstrapError, match=message):
        bs.parse_lock(text)


def test_hashed_mode_refuses_an_entry_without_hashes() -> None:
    entries = bs.parse_lock("pip==26.3 --hash=sha256:ffff\nnumpy==2.4.6\n")
    with pytest.raises(bs.BootstrapError, match="without hashes: numpy==2.4.6"):
        bs.render_requirements(entries, with_hashes=True)
    assert bs.render_requirements(entries, with_hashes=False) == "pip==26.3\nnumpy==2.4.6\n"


# -- the stamp ---------------------------------------------------------------------------------------------------
def _fake_built_venv(path: Path, stamp: dict[str, str]) -> None:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("", encoding="utf-8")
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    (path / bs.STAMP_NAME).write_text(json.dumps(stamp), encoding="utf-8")


def test_the_stamp_matches_only_the_same_lock_and_interpreter(tmp_path: Path) -> None:
    plan = bs.choose_plan(8, "x86_64")
    stamp = bs.stamp_for(b"lock v1", plan, "3.11.2", "/usr/bin/python3")
    _fake_built_venv(tmp_path / "venv", stamp)
    assert bs.is_current(tmp_path / "venv", stamp)
    assert not bs.is_current(tmp_path / "venv", bs.stamp_for(b"lock v2", plan, "3.11.2", "/usr/bin/python3"))
    assert not bs.is_current(tmp_path / "venv", bs.stamp_for(b"lock v1", plan, "3.11.9", "/usr/bin/python3"))
    other = bs.choose_plan(4, "aarch64")
    assert not bs.is_current(tmp_path / "venv", bs.stamp_for(b"lock v1", other, "3.11.2", "/usr/bin/python3"))
    (tmp_path / "venv" / "bin" / "python").unlink()  # a venv whose Python went away is rebuilt
    assert not bs.is_current(tmp_path / "venv", stamp)


def test_an_unreadable_stamp_means_rebuild(tmp_path: Path) -> None:
    stamp = bs.stamp_for(b"x", bs.choose_plan(8, "x86_64"), "3.11.2", "/usr/bin/python3")
    _fake_built_venv(tmp_path / "venv", stamp)
    (tmp_path / "venv" / bs.STAMP_NAME).write_text("{not json", encoding="utf-8")
    assert bs.read_stamp(tmp_path / "venv") is None
    assert not bs.is_current(tmp_path / "venv", stamp)


def test_piwheels_detection(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url=https://www.piwheels.org/simple\n", encoding="utf-8")
    assert bs.piwheels_configured({}, (str(conf),))
    assert bs.piwheels_configured({"PIP_EXTRA_INDEX_URL": "https://www.piwheels.org/simple"}, ())
    assert not bs.piwheels_configured({}, (str(tmp_path / "missing.conf"),))


# -- the script, for real ----------------------------------------------------------------------------------------
def _app(tmp_path: Path, lock_text: str) -> Path:
    app = tmp_path / "app"
    (app / "requirements").mkdir(parents=True)
    (app / "requirements" / "device.lock").write_text(lock_text, encoding="utf-8")
    (app / "requirements" / "device-32bit.lock").write_text(lock_text, encoding="utf-8")
    return app


def test_a_missing_lock_exits_non_zero_with_a_one_line_reason(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    result = run_script("--app", tmp_path / "app", "--venv", tmp_path / "venv")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("battwin-bootstrap: cannot read the lock ")
    assert "device.lock" in last
    assert not (tmp_path / "venv").exists()


def test_it_refuses_to_replace_a_directory_that_is_not_a_venv(tmp_path: Path) -> None:
    app = _app(tmp_path, "pip==26.3 --hash=sha256:ffff\n")
    precious = tmp_path / "venv" / "data.txt"
    precious.parent.mkdir()
    precious.write_text("keep me", encoding="utf-8")
    result = run_script("--app", app, "--venv", tmp_path / "venv")
    assert result.returncode == 1
    assert "refusing to replace" in result.stderr.strip().splitlines()[-1]
    assert precious.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("version", ["3.10", "3.9"])
def test_an_old_python_gets_the_version_message_not_a_traceback(tmp_path: Path, version: str) -> None:
    candidates = [*map(str, Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))]
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    old = next((c for c in candidates if Path(c).is_file()), None)
    if old is None:
        reason = f"no python{version} on this machine (pyenv install {version})"
        if IN_CI:  # the CI machine has pyenv's older Pythons, as tools/pyversions.py expects its newer ones
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    result = run_script("--app", tmp_path, "--venv", tmp_path / "venv", python=old)
    assert result.returncode == 1
    assert result.stderr.startswith(f"battwin-bootstrap: Python 3.11 or newer is needed, this is Python {version}.")
    assert "Traceback" not in result.stderr


def _small_lock(*names: str) -> str:
    """pip + the named packages, with their hashes, taken from the repo's device lock (all pure-Python wheels)."""
    wanted = {"pip", *names}
    entries = [e for e in bs.parse_lock(DEVICE_LOCK) if e.name in wanted]
    assert {e.name for e in entries} == wanted
    return bs.render_requirements(entries, with_hashes=True)


@pytest.mark.slow
def test_a_changed_lock_rebuilds_the_venv_and_an_unchanged_one_does_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path, _small_lock("typing-extensions"))
    venv_dir = tmp_path / "venv"
    first = run_script("--app", app, "--venv", venv_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    py = venv_dir / "bin" / "python"
    assert subprocess.run([py, "-c", "import typing_extensions"], check=False).returncode == 0
    pip_version = subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True, check=True).stdout
    assert pip_version.startswith("pip 26.3 ")
    marker = venv_dir / "left-over"
    marker.write_text("from the first build", encoding="utf-8")

    again = run_script("--app", app, "--venv", venv_dir)
    assert again.returncode == 0
    assert "nothing to do" in again.stderr
    assert marker.exists()

    (app / "requirements" / "device.lock").write_text(_small_lock("annotated-types"), encoding="utf-8")
    rebuilt = run_script("--app", app, "--venv", venv_dir)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert not marker.exists()  # rebuilt from scratch, not installed over
    assert subprocess.run([py, "-c", "import annotated_types"], check=False).returncode == 0
    assert subprocess.run([py, "-c", "import typing_extensions"], capture_output=True, check=False).returncode != 0
    stamp = json.loads((venv_dir / bs.STAMP_NAME).read_text(encoding="utf-8"))
    assert stamp["lock"] == "requirements/device.lock"


@pytest.mark.slow
def test_the_real_device_lock_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(REPO / "requirements", app / "requirements")
    venv_dir = tmp_path / "venv"
    result = run_script("--app", app, "--venv", venv_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"hashed":true' in result.stderr
    probe = (
        "import ai_edge_litert.interpreter, numpy, yaml, awscrt, awsiot, pydantic, pymodbus, serial, smbus2;"
        "print(numpy.__version__, pydantic.VERSION)"
    )
    out = subprocess.run([venv_dir / "bin" / "python", "-c", probe], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    pins = {e.name: e.requirement for e in bs.parse_lock(DEVICE_LOCK)}
    assert f"pydantic=={out.stdout.split()[1]}" == pins["pydantic"]
    assert f"numpy=={out.stdout.split()[0]}" in DEVICE_LOCK


# -- the Greengrass install step, as the nucleus runs it, from a local wheel cache -------------------------------
@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every wheel of requirements/device.lock, checked against the lock's hashes: ``$BATTWIN_WHEELHOUSE`` if it
    names a folder, else downloaded once (pip's own cache makes a second run cheap)."""
    given = os.environ.get("BATTWIN_WHEELHOUSE")
    if given and Path(given).is_dir():
        return Path(given)
    dest = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--progress-bar"]
    cmd += ["off", "--only-binary=:all:", "--require-hashes", "-r", str(REPO / "requirements" / "device.lock")]
    result = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        reason = f"cannot fill a wheel cache from the package index: {result.stderr.strip()[-300:]}"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return dest


def install_step(recipe: Path, artifacts: Path, decompressed: Path, work: Path) -> tuple[str, dict[str, str]]:
    """The recipe's install Script and the lifecycle's Setenv with the nucleus' variables substituted."""
    import yaml

    lifecycle = yaml.safe_load(recipe.read_text(encoding="utf-8"))["Lifecycle"]["all"]
    values = {"artifacts:path": str(artifacts), "artifacts:decompressedPath": str(decompressed), "work:path": str(work)}

    def sub(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        left = re.findall(r"\{[a-z]+:[^}]*\}", text)
        assert not left, f"recipe variables the test does not know: {left}"
        return text

    env = {k: sub(str(v)) for k, v in lifecycle["Setenv"].items()}
    return sub(lifecycle["install"]["Script"]), env


def run_install_step(tmp_path: Path, wheelhouse: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Build the agent artifact, then run the recipe's install step as a nucleus would, pip limited to
    ``wheelhouse``."""
    from components.build import build_agent_zip

    artifacts, decompressed, work = tmp_path / "artifacts", tmp_path / "decompressed", tmp_path / "work"
    for d in (artifacts, decompressed, work):
        d.mkdir()
    build_agent_zip(artifacts)
    script, setenv = install_step(REPO / "recipes" / "com.battwin.Agent.yaml", artifacts, decompressed, work)
    bindir = tmp_path / "bin"  # the nucleus runs "python3" from PATH: this interpreter's base Python
    bindir.mkdir()
    (bindir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        **setenv,
        "PIP_NO_INDEX": "1",  # nothing from a package index: the wheel cache must hold every locked file
        "PIP_FIND_LINKS": str(wheelhouse),
    }
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=1100, check=False)
    return result, setenv


@pytest.mark.slow
def test_the_install_step_fails_without_the_wheels_it_needs(tmp_path: Path) -> None:
    """Control for the test below: with no index and an empty cache the step fails (so its success there comes from
    the cache, not from a package index), non-zero with bootstrap's one-line reason."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result, _ = run_install_step(tmp_path, empty)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "battwin-bootstrap: pip install of pip failed" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_recipe_install_step_builds_the_venv_from_a_wheel_cache_and_the_agent_runs(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """The Agent recipe's install Script, as nucleus lite runs it with the ZIP left packed: it unpacks the real
    agent artifact (components.build) and runs device_agent/bootstrap.py, whose pip installs the whole
    requirements/device.lock (hashes checked, wheels only) from the local cache alone (no index); the installed
    agent then imports the device path with LiteRT and answers ``--help`` the way the run step starts it."""
    result, setenv = run_install_step(tmp_path, wheelhouse)
    work = tmp_path / "work"
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"hashed":true' in result.stderr and "venv ready" in result.stderr
    app, venv_dir = Path(setenv["AGENT_UNPACKED"]), Path(setenv["AGENT_VENV"])
    assert (app / "device_agent" / "cli.py").is_file()  # unpacked from the ZIP by the step itself
    stamp = json.loads((venv_dir / bs.STAMP_NAME).read_text(encoding="utf-8"))
    assert stamp["lock"] == "requirements/device.lock" and stamp["hashed"] == "yes"

    # as the run step starts it: the venv's python, the unpacked app on PYTHONPATH, from another directory
    run_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(app), "LANG": "C.UTF-8"}
    py = str(venv_dir / "bin" / "python")
    probe = (
        "import ai_edge_litert.interpreter, device_agent.agent, device_agent.cli, device_agent.health.hybrid as h;"
        "from device_agent.health.shipped import SHIPPED_MODEL_DIR as d;"
        "print(h.load_hybrid_model(d).version, device_agent.cli.__file__)"
    )
    out = subprocess.run([py, "-c", probe], env=run_env, cwd=work, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0].startswith("hybrid-") and out.stdout.split()[1].startswith(str(app))
    helped = subprocess.run(
        [py, "-m", "device_agent.cli", "--help"], env=run_env, cwd=work, capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "run" in helped.stdout and "usage" in helped.stdout.lower()
