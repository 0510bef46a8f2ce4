"""End to end: the project's REAL built components (``python -m components.build``) deployed on the nucleus
emulator's classic and lite flavours, run as the nucleus runs them, driven from the cloud side.

Per flavour: the agent reaches RUNNING and stays on one IPC connection, its telemetry arrives through Basic
Ingest (the recipe's default: ``$aws/rules/battwin_telemetry/battwin/<thing>/telemetry``, allowed by the
recipe's accessControl) in frames within lite's 10,000-byte IPC limit, its configuration shadow works
through IoT Core's shadow topics (no shadow IPC), and a new SohModel version reaches it without a restart
(lite deletes the previous version's artifacts; the agent keeps running). On classic, a lifecycle change
(a configuration value interpolated into the run step's Setenv) does restart it. Lite refuses the old
recipe style with its own messages.

What is replaced: only the install step's ``bootstrap.py`` call (the venv built from the device lock with pip,
covered by the bootstrap tests and the Pi check): here ``{work:path}/venv`` is a link to this test's own
venv. Everything else runs as built: the ZIP unpack when the ZIP is left packed (lite), the run script and
its Setenv with the deployment's configuration merged in.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.build import build_model_artifacts, dump_recipe
from device_agent.health.model_files import read_model_file, write_model_file
from devkit.nucleus import FLAVOURS, DeploymentError, NucleusEmulator
from schema.messages import telemetry_samples
from tests.greengrass.gg_support import AGENT, MODEL, SHADOW, SHADOW_PREFIX, THING, load_yaml
from tests.support import REPO, require_module

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

require_module("ai_edge_litert")  # the agent loads the SohModel versions with the real TFLite runtime

LITE_IPC_LIMIT = 10_000
TELEMETRY = f"$aws/rules/battwin_telemetry/battwin/{THING}/telemetry"  # the recipe's default: Basic Ingest
INTERVAL_S = 0.05
#: the deployment's configuration merge: faster than the defaults, nothing in the recipe edited; batches
#: keep their default 60 samples (11,201 B as one message: over lite's limit) and close within 5 s
FAST: dict[str, Any] = {
    "source": {"sample_interval_s": INTERVAL_S},
    "telemetry": {"batch_max_age_s": 5.0},
    "health": {"model_poll_s": 0.2},
}
WAIT = 120.0  # generous: the machine is shared


# -- the build --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m components.build --out …``: both components, as ``make gg-build`` builds them."""
    out = tmp_path_factory.mktemp("e2e") / "gg-build"
    done = subprocess.run(
        [sys.executable, "-m", "components.build", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def _built_recipe(build: Path, name: str) -> tuple[Path, dict[str, Any]]:
    (path,) = (build / "recipes").glob(f"{name}-*.yaml")
    return path, load_yaml(path)


def _install_with_this_venv(build: Path) -> str:
    """The built install script with its ``bootstrap.py`` line (pip into a fresh venv: covered by the bootstrap
    tests and the Pi check) replaced by a link from ``$AGENT_VENV`` to this test's venv (``sys.prefix``)."""
    _, recipe = _built_recipe(build, AGENT)
    script = recipe["Lifecycle"]["all"]["install"]["Script"]
    bootstrap = [line for line in script.splitlines() if "device_agent/bootstrap.py" in line]
    assert len(bootstrap) == 1, script
    return script.replace(bootstrap[0], f'ln -sfn {shlex.quote(sys.prefix)} "$AGENT_VENV"')


def _model_version(build: Path, tmp_path: Path, version: str, model_version: str) -> Path:
    """A greengrass-build folder with SohModel ``version``: the built files, model.json's ``version`` changed
    (the .tflite and so its sha256 unchanged), checked by the build's own artifact step."""
    _, recipe = _built_recipe(build, MODEL)
    staged = tmp_path / f"model-{version}"
    staged.mkdir()
    built = build / "artifacts" / MODEL / recipe["ComponentVersion"]
    shutil.copyfile(built / "model.tflite", staged / "model.tflite")
    card = read_model_file(built / "model.json")
    write_model_file(card.model_copy(update={"version": model_version}), staged / "model.json")
    out = tmp_path / f"build-{version}"
    art = out / "artifacts" / MODEL / version
    art.mkdir(parents=True)
    build_model_artifacts(art, staged)  # the sha256 model.json states matches the .tflite
    (out / "recipes").mkdir()
    dump_recipe({**recipe, "ComponentVersion": version}, out / "recipes" / f"{MODEL}-{version}.yaml")
    return out


# -- what the emulator saw --------------------------------------------------------------------------
def _telemetry(nucleus: NucleusEmulator) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in nucleus.published if m.topic == TELEMETRY]


def _wait_telemetry(nucleus: NucleusEmulator, count: int) -> list[dict[str, Any]]:
    arrived = nucleus.wait_for(lambda ms: sum(m.topic == TELEMETRY for m in ms) >= count, WAIT)
    assert arrived, f"fewer than {count} telemetry messages; agent log:\n{_log_tail(nucleus)}"
    return _telemetry(nucleus)


def _log_path(nucleus: NucleusEmulator) -> Path:
    assert nucleus.root is not None
    return nucleus.root / "logs" / f"{AGENT}.log"


def _log_tail(nucleus: NucleusEmulator) -> str:
    path = _log_path(nucleus)
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _log_records(nucleus: NucleusEmulator) -> list[dict[str, Any]]:
    path = _log_path(nucleus)
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):  # a line still being written
                records.append(json.loads(line))
    return records


def _wait_log(nucleus: NucleusEmulator, predicate: Callable[[dict[str, Any]], bool], after: int = 0) -> int:
    """Wait until a record past the first ``after`` ones satisfies ``predicate``; the number of records then."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        records = _log_records(nucleus)
        if any(predicate(r) for r in records[after:]):
            return len(records)
        time.sleep(0.2)
    raise AssertionError(f"no such log record; agent log:\n{_log_tail(nucleus)}")


def _model_loaded(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("msg") == "health model loaded" and r.get("version") == version and r.get("origin") == "root"


def _gaps(message: dict[str, Any]) -> list[float]:
    ts = [s["ts"] for s in telemetry_samples(message["body"])]
    return [round(b - a, 3) for a, b in itertools.pairwise(ts)]


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


# -- the tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_built_components_run_take_shadow_configuration_and_a_new_model_without_a_restart(
    nucleus: NucleusEmulator, build: Path, tmp_path: Path, flavour: str
) -> None:
    root = tmp_path / "greengrass"
    install = {AGENT: _install_with_this_venv(build)}
    _, model_recipe = _built_recipe(build, MODEL)
    first_model = read_model_file(build / "artifacts" / MODEL / model_recipe["ComponentVersion"] / "model.json")

    # 1. the build as it is, the deployment's configuration merged in
    result = nucleus.deploy_build(build, configuration={AGENT: FAST}, install_overrides=install)
    assert result.installed == [MODEL, AGENT]  # the model first: a (soft) dependency
    assert nucleus.wait_for_state(AGENT, "RUNNING", WAIT), _log_tail(nucleus)
    assert nucleus.wait_for_state(MODEL, "FINISHED", WAIT)  # its run step is `true`
    if flavour == "lite":  # the ZIP was left packed: the install step unpacked it into the work folder
        assert (root / "work" / AGENT / "battwin-agent" / "device_agent" / "cli.py").is_file()
        assert not any((root / "packages" / "artifacts-unarchived" / AGENT).rglob("cli.py"))
    pid = nucleus.component_pid(AGENT)
    assert pid is not None
    _wait_telemetry(nucleus, 3)
    loaded = _wait_log(nucleus, _model_loaded(first_model.version))  # the deployed version, from the root
    assert all(g == INTERVAL_S for m in _telemetry(nucleus) for g in _gaps(m)), "every sample is published"

    # 2. the configuration shadow, from the cloud side: IoT Core's shadow topics, no shadow IPC
    assert nucleus.wait_for_subscriptions("iot", f"{SHADOW_PREFIX}/update/+", 1, WAIT)
    assert nucleus.wait_for_shadow(
        lambda d: _get(d, "state", "reported", "telemetry", "decimation") == 1, SHADOW, None, WAIT
    )
    nucleus.update_shadow({"state": {"desired": {"telemetry": {"decimation": 3}}}}, SHADOW)
    applied = nucleus.wait_for_shadow(
        lambda d: _get(d, "state", "reported", "telemetry", "decimation") == 3, SHADOW, None, WAIT
    )
    assert applied, _log_tail(nucleus)
    seen = len(_telemetry(nucleus))
    # before the change, full batches: packed (the default), the 60 samples of a batch fit one frame far under
    # lite's limit (as plain JSON they were closed by size at fewer than 60: 60 would have made a frame lite
    # closes the connection on)
    full = [
        m for m in _telemetry(nucleus)[:seen] if len(telemetry_samples(m["body"])) == 60 and "zsamples" in m["body"]
    ]
    assert full, [len(telemetry_samples(m["body"])) for m in _telemetry(nucleus)]
    decimated = nucleus.wait_for(
        lambda ms: any(
            len(g := _gaps(json.loads(m.payload))) >= 1 and all(x == round(3 * INTERVAL_S, 3) for x in g)
            for m in [m for m in ms if m.topic == TELEMETRY][seen:]
        ),
        WAIT,
    )
    assert decimated, f"no telemetry with every 3rd sample: {[_gaps(m) for m in _telemetry(nucleus)[seen:]]}"
    assert nucleus.component_pid(AGENT) == pid  # a live setting: no restart

    # 3. a new SohModel version: the agent switches without a restart
    new_version = "1.1.0"
    result = nucleus.deploy_build(_model_version(build, tmp_path, new_version, "e2e-1.1.0"))
    assert result.installed == [MODEL] and result.unchanged == [AGENT] and result.restarted == []
    _wait_log(nucleus, _model_loaded("e2e-1.1.0"), after=loaded)
    assert nucleus.component_pid(AGENT) == pid, "the agent was restarted by a model deployment"
    old = root / "packages" / "artifacts" / MODEL / model_recipe["ComponentVersion"]
    if flavour == "lite":  # the previous version's files are gone; the agent runs on
        assert old in result.removed_artifacts and not old.exists()
    else:
        assert old.is_dir() and result.removed_artifacts == []
    after_model = len(_telemetry(nucleus))
    _wait_telemetry(nucleus, after_model + 3)
    after_model_pid = nucleus.component_pid(AGENT)
    assert after_model_pid == pid and nucleus.component_state(AGENT) == "RUNNING"

    if flavour == "classic":
        # the contrast: a deployment whose configuration changes the run step's interpolated Setenv
        # (BATTWIN_LOG_LEVEL) restarts the agent; the earlier merge (FAST) is kept, and it starts on the
        # last model that passed its checks
        before = len(_log_records(nucleus))
        result = nucleus.deploy_build(
            build, components=[AGENT], configuration={AGENT: {"log_level": "DEBUG"}}, install_overrides=install
        )
        assert result.restarted == [AGENT] and result.installed == []
        assert nucleus.configuration(AGENT)["health"]["model_poll_s"] == FAST["health"]["model_poll_s"]
        assert nucleus.wait_for_connections(2, WAIT)
        restarted = nucleus.component_pid(AGENT)
        assert restarted not in (None, pid)
        _wait_log(nucleus, _model_loaded("e2e-1.1.0"), after=before)
        _wait_telemetry(nucleus, len(_telemetry(nucleus)) + 2)
        assert nucleus.connects == 2  # one per process, no reconnects
    else:
        assert nucleus.connects == 1, f"{nucleus.connects} IPC connections: the agent reconnected"

    # every frame within lite's limit (lite closes the socket on a bigger one), nothing refused
    telemetry = [m for m in nucleus.published if m.topic == TELEMETRY]
    assert nucleus.oversized_frames == 0 and 0 < nucleus.max_frame_bytes <= LITE_IPC_LIMIT
    assert all(len(m.payload) < LITE_IPC_LIMIT and m.component == AGENT for m in telemetry)
    assert nucleus.denials == []
    assert not [op for _, op in nucleus.operations if op in ("GetThingShadow", "UpdateThingShadow")]
    log.info(  # the figures, for a reader of the run (pytest --log-cli-level=INFO)
        "e2e %s: telemetry messages=%d max frame=%d B max payload=%d B IPC connections=%d "
        "agent PID first=%s after the model deployment=%s at the end=%s",
        flavour,
        len(telemetry),
        nucleus.max_frame_bytes,
        max(len(m.payload) for m in telemetry),
        nucleus.connects,
        pid,
        after_model_pid,
        nucleus.component_pid(AGENT),
    )


def _old_style(recipe: dict[str, Any], kind: str) -> dict[str, Any]:
    out = json.loads(json.dumps(recipe))
    lifecycle = out["Lifecycle"]["all"]
    if kind == "cross-component path":  # the model version's path in the run step, as before issue 13
        lifecycle["run"]["Setenv"]["BATTWIN_HEALTH__MODEL_DIR"] = "{com.battwin.SohModel:artifacts:path}"
    else:  # "Run": the step names as classic (case-insensitive) accepts them
        lifecycle["Run"] = lifecycle.pop("run")
    return out


@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("cross-component path", "Unhandled variable substitution: com.battwin.SohModel:artifacts:path."),
        ("upper-case Run", "no run or startup step: nucleus lite needs one"),
    ],
)
def test_lite_refuses_the_old_recipe_style(
    nucleus: NucleusEmulator, build: Path, tmp_path: Path, kind: str, message: str
) -> None:
    path, recipe = _built_recipe(build, AGENT)
    old = tmp_path / "old"
    shutil.copytree(build, old)
    dump_recipe(_old_style(recipe, kind), old / "recipes" / path.name)
    assert (old / "recipes" / path.name).stat().st_size <= 8196  # refused for the reason, not for its size
    with pytest.raises(DeploymentError, match=message.replace(".", r"\.")):
        nucleus.deploy_build(old, install_overrides={AGENT: _install_with_this_venv(build)})
    # nothing was deployed: the check comes before any change
    assert nucleus.component_state(AGENT) is None and nucleus.component_pid(AGENT) is None
    assert not (tmp_path / "greengrass" / "packages").exists()
