"""Model hot-swap: a good model is switched to between polls, a bad one is refused and the old one kept."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.health.estimator import Forecast
from device_agent.health.model_manager import ModelManager
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.settings import SimulatorSettings
from hardware.simulator.source import SimulatorSource


class FakeModel:
    method = "hybrid"

    def __init__(self, version: str) -> None:
        self.version = version

    def forecast(self, points, c0_ah, eol_threshold, max_cycles):
        return Forecast(soh_now=0.9, cycles=[1.0], soh=[0.9], eol_cycle=None)


def loader(path: Path) -> FakeModel:
    doc = json.loads((path / "model.json").read_text())  # raises on a broken file, like the real loader
    if doc.get("broken"):
        raise ValueError("sha256 mismatch")
    return FakeModel(doc["version"])


def model_dir(root: Path, name: str, **doc) -> Path:
    d = root / name
    d.mkdir()
    (d / "model.json").write_text(json.dumps(doc))
    (d / "model.tflite").write_bytes(b"x")
    return d


@pytest.fixture
def agent(tmp_path):
    cfg = AgentConfig(thing_name="swap-1", spool={"path": tmp_path / "s.db"})
    src = SimulatorSource(SimulatorSettings(time_acceleration=1e6), interval_s=10)
    transport = MemoryTransport()
    a = Agent(cfg, src, transport, Spool(tmp_path / "s.db"))
    yield a
    a.shutdown(0)


def alarms(agent: Agent) -> list[dict]:
    out = []
    for m in agent.spool.peek(10_000):
        env = json.loads(m.payload)
        if env["kind"] == "alarms":
            out.append(env["body"])
    return out


@pytest.mark.slow
def test_swap_good_then_bad_then_pinned(agent, tmp_path):
    mm = ModelManager(agent, loader)
    assert mm.swap(model_dir(tmp_path, "v1", version="1.0.0"))
    agent.run(threading.Event(), max_samples=2)  # the swap happens on the agent's thread
    assert agent.estimator.model.version == "1.0.0"
    # a corrupt new version is refused and 1.0.0 keeps running
    assert not mm.swap(model_dir(tmp_path, "v2", version="2.0.0", broken=True))
    agent.run(threading.Event(), max_samples=2)
    assert agent.estimator.model.version == "1.0.0"
    refused = [a for a in alarms(agent) if a["code"] == "model_rejected"]
    assert refused and "sha256 mismatch" in refused[-1]["message"] and "1.0.0" in refused[-1]["message"]
    # a pin refuses any other version
    agent.config.health.model_version_pin = "1.0.0"
    assert not mm.swap(model_dir(tmp_path, "v3", version="3.0.0"))
    assert mm.swap(model_dir(tmp_path, "v1b", version="1.0.0"))


def test_first_model_broken_runs_physics_with_an_active_alarm(agent, tmp_path):
    mm = ModelManager(agent, loader)
    assert not mm.swap(model_dir(tmp_path, "bad", version="1", broken=True))
    agent.run(threading.Event(), max_samples=2)
    assert agent.estimator.model is None
    assert "model_unavailable" in agent.alarms.active


def test_watch_notices_files_replaced_in_place(agent, tmp_path):
    d = model_dir(tmp_path, "live", version="1.0.0")
    mm = ModelManager(agent, loader)
    mm.swap(d)
    mm.watch(interval_s=0.05)
    try:
        (d / "model.json").write_text(json.dumps({"version": "1.1.0"}))
        for _ in range(200):
            if mm.current_version == "1.1.0":
                break
            threading.Event().wait(0.02)
        assert mm.current_version == "1.1.0" and mm.swaps == 2
    finally:
        mm.stop()


def test_models_outside_the_artifact_root_are_refused(agent, tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    inside = model_dir(root, "v1", version="1.0.0")
    outside = model_dir(tmp_path, "evil", version="6.6.6")
    agent.config.health.model_root = root
    mm = ModelManager(agent, loader)
    assert mm.swap(inside)
    assert not mm.swap(root / ".." / "evil")  # traversal
    (root / "link").symlink_to(outside)
    assert not mm.swap(root / "link")  # symlink escape
    assert mm.current_version == "1.0.0"


def test_a_new_version_directory_under_the_root_is_picked_up(agent, tmp_path):
    """Greengrass lays a new SohModel version next to the old one; the agent switches without a restart."""
    root = tmp_path / "com.battwin.SohModel"
    root.mkdir()
    v1 = model_dir(root, "1.9.0", version="1.9.0")
    agent.config.health.model_root = root
    mm = ModelManager(agent, loader)
    mm.swap(v1)
    model_dir(root, "1.10.0", version="1.10.0")
    mm.check_root(root)
    assert mm.current_version == "1.10.0"
    model_dir(root, "1.11.0", version="1.11.0", broken=True)
    mm.check_root(root)
    mm.check_root(root)  # refused once, not retried while its files stay the same
    assert mm.current_version == "1.10.0" and mm.refusals == 1
