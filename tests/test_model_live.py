"""Model updates without a restart, with the real TFLite loader and model files built from the shipped model.

The agent is given the SohModel component's artifact root; versions appear and disappear under it as
the nucleus deploys them (lite deletes the previous version's folder). A bad version is refused with an
alarm while the model in use keeps running; after a restart the agent starts on the last good one.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.health import hybrid
from device_agent.health.model_files import read_model_file, sha256_file, write_model_file
from device_agent.health.model_manager import LAST_GOOD_KEY, ModelManager, semver_key, version_dirs
from device_agent.health.shipped import SHIPPED_MODEL_DIR
from device_agent.runtime import attach_model_manager
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings
from tests.support import require_module

require_module("ai_edge_litert")


def make_version(root: Path, name: str, kind: str = "good") -> Path:
    """A SohModel version folder built from the shipped model; the model's own version is ``m-<name>``.

    kind: good | bad_sha (model.json states another sha256) | truncated (half a .tflite, sha256 restated to
    match, so only the interpreter can tell) | wrong_shape (model.json promises a 30-step window the .tflite
    does not have)."""
    d = root / name
    d.mkdir(parents=True)
    tflite = (SHIPPED_MODEL_DIR / "model.tflite").read_bytes()
    mf = read_model_file(SHIPPED_MODEL_DIR / "model.json")
    update: dict = {"version": f"m-{name}"}
    if kind == "bad_sha":
        update["tflite_sha256"] = "0" * 64
    elif kind == "truncated":
        tflite = tflite[: len(tflite) // 2]
        (d / "model.tflite").write_bytes(tflite)
        update["tflite_sha256"] = sha256_file(d / "model.tflite")
        update["tflite_bytes"] = len(tflite)
    elif kind == "wrong_shape":
        features = mf.features.model_copy(update={"window": 30})
        seq = mf.seq_input.model_copy(update={"shape": [1, 30, mf.seq_input.shape[2]]})
        update.update(features=features, seq_input=seq)
    else:
        assert kind == "good", kind
    (d / "model.tflite").write_bytes(tflite)
    write_model_file(mf.model_copy(update=update), d / "model.json")
    return d


def new_agent(tmp_path: Path, root: Path, **health) -> Agent:
    cfg = AgentConfig(
        thing_name="live-1",
        spool={"path": tmp_path / "spool.db"},
        health={"model_root": root, "model_poll_s": 0.05, **health},
    )
    src = SimulatorSource(SimulatorSettings(time_acceleration=1e6), interval_s=10)
    seen: list[dict] = []

    def on_message(kind, body, msg_id) -> None:
        if kind == "alarms":
            seen.append(body.model_dump(mode="json"))

    agent = Agent(cfg, src, MemoryTransport(), Spool(tmp_path / "spool.db"), on_message=on_message)
    agent.alarms_seen = seen
    return agent


def step(agent: Agent) -> None:
    """Let the agent run its queued tasks (a swap is applied on its own thread, between two polls)."""
    agent.run(threading.Event(), max_samples=1)


def alarms(agent: Agent, code: str) -> list[dict]:
    """The alarms the agent emitted (spooled for the cloud) with this code, oldest first."""
    return [a for a in agent.alarms_seen if a["code"] == code]


def in_use(agent: Agent) -> str | None:
    model = agent.estimator.model
    return None if model is None else model.version


def settle(mm: ModelManager, root: Path) -> None:
    """Two scans: a folder is only tried once it is unchanged since the previous scan."""
    mm.check_root(root, settle=True)
    mm.check_root(root, settle=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "greengrass" / "packages" / "artifacts" / "com.battwin.SohModel"
    r.mkdir(parents=True)
    return r


def test_versions_are_ordered_by_semantic_version(root):
    for name in ("1.9.0", "1.10.0", "1.10.0-rc.1", "1.10.0-rc.2", "0.9.9", "latest", "1.2"):
        (root / name).mkdir()
    (root / "2.0.0").write_text("a file, not a version folder")
    assert [d.name for d in version_dirs(root)] == ["1.10.0", "1.10.0-rc.2", "1.10.0-rc.1", "1.9.0", "0.9.9"]
    assert semver_key("1.0.0-alpha") < semver_key("1.0.0-alpha.1") < semver_key("1.0.0-beta") < semver_key("1.0.0")
    assert version_dirs(root / "missing") == []


@pytest.mark.slow
def test_bad_versions_are_refused_good_ones_switched_to_and_a_restart_starts_on_the_last_good(tmp_path, root):
    make_version(root, "1.0.0")
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    step(agent)
    assert in_use(agent) == "m-1.0.0" and agent.estimator.model.method == "hybrid"

    # 1.0.1 arrives with a model.json whose sha256 is not the .tflite's: refused, 1.0.0 keeps running
    make_version(root, "1.0.1", "bad_sha")
    settle(mm, root)
    step(agent)
    assert in_use(agent) == "m-1.0.0"
    (rejected,) = alarms(agent, "model_rejected")
    assert "1.0.1" in rejected["message"] and "sha_mismatch" in rejected["message"]
    assert "still using m-1.0.0" in rejected["message"]
    for _ in range(3):  # remembered: not tried again while its files stay the same
        mm.check_root(root, settle=True)
    assert mm.refusals == 1

    # 1.0.2 (good) arrives: switched to, and remembered as the last good model
    make_version(root, "1.0.2")
    settle(mm, root)
    step(agent)
    assert in_use(agent) == "m-1.0.2"
    fact = agent.state.get_fact(LAST_GOOD_KEY)
    assert fact["component_version"] == "1.0.2" and fact["root"] == str(root)
    assert fact["tflite_sha256"] == sha256_file(root / "1.0.2" / "model.tflite")

    # the nucleus removes 1.0.0: nothing changes for the running agent, which keeps estimating with 1.0.2
    shutil.rmtree(root / "1.0.0")
    settle(mm, root)
    agent.run(threading.Event(), max_samples=50)
    assert in_use(agent) == "m-1.0.2" and agent.stats.samples > 1

    # a newer version whose tensors do not match model.json: refused
    make_version(root, "1.0.3", "wrong_shape")
    settle(mm, root)
    step(agent)
    assert in_use(agent) == "m-1.0.2"
    assert "shape_mismatch" in alarms(agent, "model_rejected")[-1]["message"]
    agent.shutdown(0)
    agent.close()

    # restart: the agent starts on 1.0.2, the last good model, though a newer (bad) 1.0.3 is there
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    step(agent)
    assert in_use(agent) == "m-1.0.2" and mm.current_dir == root / "1.0.2"
    # it was on 1.0.2 before it looked at the newer 1.0.3, which is refused again (its files are unchanged,
    # but a restart forgets refusals: one alarm per start, not one per poll)
    (again,) = alarms(agent, "model_rejected")
    assert "1.0.3" in again["message"] and "still using m-1.0.2" in again["message"]
    assert "model_unavailable" not in agent.alarms.active
    agent.shutdown(0)
    agent.close()


@pytest.mark.slow
def test_the_model_in_use_keeps_running_when_its_folder_is_deleted(tmp_path, root):
    """Nucleus lite deletes the previous version's artifacts, here the one in use after a refused update."""
    make_version(root, "1.0.0")
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    make_version(root, "1.1.0", "truncated")
    settle(mm, root)
    shutil.rmtree(root / "1.0.0")
    settle(mm, root)
    agent.run(threading.Event(), max_samples=50)
    assert in_use(agent) == "m-1.0.0" and agent.stats.samples == 50
    assert "corrupt" in alarms(agent, "model_rejected")[-1]["message"]
    assert "model_unavailable" not in agent.alarms.active
    assert mm.refusals == 1
    agent.shutdown(0)
    agent.close()

    # a restart finds neither the last good model nor a valid version: the shipped model, with an alarm
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    step(agent)
    assert mm.current_origin == "shipped" and mm.current_dir == SHIPPED_MODEL_DIR
    assert in_use(agent) == read_model_file(SHIPPED_MODEL_DIR / "model.json").version
    (refused,) = [a["message"] for a in alarms(agent, "model_rejected") if "1.1.0" in a["message"]]
    # refused while the start-up was still choosing (it went on to the shipped model): not "no model in use"
    assert "trying the next candidate at start-up" in refused and "no model in use" not in refused
    # and a good version arriving later takes over from the shipped model
    make_version(root, "1.2.0")
    settle(mm, root)
    step(agent)
    assert in_use(agent) == "m-1.2.0"
    agent.shutdown(0)
    agent.close()


def test_with_nothing_valid_and_no_shipped_model_the_agent_runs_physics_and_says_why(tmp_path, root):
    make_version(root, "1.0.0", "bad_sha")
    agent = new_agent(tmp_path, root, use_shipped_model=False)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    step(agent)
    assert agent.estimator.model is None
    reason = agent.alarms.active["model_unavailable"].message
    assert "1.0.0" in reason and "sha_mismatch" in reason and str(root) in reason
    agent.shutdown(0)
    agent.close()


def test_a_folder_still_being_written_is_not_refused(tmp_path, root):
    make_version(root, "1.0.0")
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    full = make_version(tmp_path / "staging", "1.0.1")
    d = root / "1.0.1"
    d.mkdir()
    shutil.copy(full / "model.json", d / "model.json")
    data = (full / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(data[:1000])  # the download has only begun
    mm.check_root(root, settle=True)
    (d / "model.tflite").write_bytes(data)  # done
    mm.check_root(root, settle=True)  # changed since the last scan: wait
    assert mm.refusals == 0 and mm.current_version == "m-1.0.0"
    mm.check_root(root, settle=True)
    assert mm.refusals == 0 and mm.current_version == "m-1.0.1"
    agent.shutdown(0)
    agent.close()


def test_without_a_tflite_runtime_nothing_is_refused_or_retried(tmp_path, root, monkeypatch):
    """A 32-bit device has no LiteRT: physics only with one reason, not a refusal per version per poll."""

    def no_runtime():
        raise hybrid.ModelLoadError("runtime_unavailable", "neither ai_edge_litert nor tflite_runtime is installed")

    monkeypatch.setattr(hybrid, "interpreter_class", no_runtime)
    make_version(root, "1.0.0")
    agent = new_agent(tmp_path, root)
    mm = ModelManager(agent, store=agent.state)
    mm.start()
    make_version(root, "1.0.1")
    settle(mm, root)
    step(agent)
    assert agent.estimator.model is None and mm.refusals == 0
    assert "runtime_unavailable" in agent.alarms.active["model_unavailable"].message
    assert alarms(agent, "model_rejected") == []
    agent.shutdown(0)
    agent.close()


def test_the_runtime_wiring_watches_the_root_and_switches_live(tmp_path, root):
    """attach_model_manager (what `battwin run` uses): a deployment of a new version reaches the running agent."""
    make_version(root, "1.0.0")
    agent = new_agent(tmp_path, root)
    mm = attach_model_manager(agent)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        make_version(root, "1.0.1")
        for _ in range(3000):  # generous: the machine is loaded; the poll is 0.05 s
            if in_use(agent) == "m-1.0.1":
                break
            threading.Event().wait(0.01)
        assert in_use(agent) == "m-1.0.1" and mm.current_dir == root / "1.0.1"
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not mm._thread.is_alive()  # stopped with the agent
    agent.close()
