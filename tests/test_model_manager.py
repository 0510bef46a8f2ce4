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
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings
from tests.support import require_module


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


# -- the real loader (sha256, tensor shapes, the interpreter) through ModelManager -----------------------------------
def real_version(root: Path, name: str, kind: str = "good") -> Path:
    """A SohModel version folder made from the shipped model; its model.json says version ``m-<name>``.

    kind: good | bad_sha (model.json states another sha256) | truncated (half a .tflite, the sha256 restated so
    only the interpreter can tell) | wrong_shape (model.json promises a 30-step window the .tflite does not have)
    | bad_json (model.json is not JSON) | no_tflite."""
    from device_agent.health.model_files import read_model_file, sha256_file, write_model_file
    from device_agent.health.shipped import SHIPPED_MODEL_DIR

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
        update["features"] = features
        update["seq_input"] = mf.seq_input.model_copy(update={"shape": [1, 30, mf.seq_input.shape[2]]})
    else:
        assert kind in ("good", "bad_json", "no_tflite"), kind
    if kind != "no_tflite":
        (d / "model.tflite").write_bytes(tflite)
    write_model_file(mf.model_copy(update=update), d / "model.json")
    if kind == "bad_json":
        (d / "model.json").write_text('{"version": "m-broken", ', encoding="utf-8")
    return d


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bad_sha", "sha_mismatch"),
        ("truncated", "corrupt"),
        ("wrong_shape", "shape_mismatch"),
        ("bad_json", "bad_json"),
        ("no_tflite", "missing"),
    ],
)
def test_the_real_loader_refuses_a_bad_model_with_a_typed_reason(tmp_path, kind, reason):
    require_module("ai_edge_litert")
    from device_agent.health.hybrid import ModelLoadError, load_hybrid_model

    with pytest.raises(ModelLoadError) as caught:
        load_hybrid_model(real_version(tmp_path, "1.0.1", kind))
    assert type(caught.value) is ModelLoadError and caught.value.reason == reason
    # positive control: the same files made without the fault load and predict
    good = load_hybrid_model(real_version(tmp_path, "1.0.0"))
    assert good.version == "m-1.0.0" and good.method == "hybrid"


def health_of(seen: list[tuple[str, object]]) -> list[tuple[int, str, str]]:
    return [(b.cycle_index, b.method, b.model_version) for k, b in seen if k == "health"]  # type: ignore[attr-defined]


def more(agent: Agent, samples: int) -> None:
    """Run the agent for ``samples`` more samples (``max_samples`` counts from its start)."""
    agent.run(threading.Event(), max_samples=agent.stats.samples + samples)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bad_sha", "truncated", "wrong_shape"])
def test_with_the_real_loader_a_bad_version_is_refused_the_old_model_keeps_predicting_and_a_good_one_takes_over(
    tmp_path, kind
):
    """RELIABILITY.md "models" / docs/greengrass.md: the real ModelManager + load_hybrid_model, the agent's own
    health messages show which model produced each prediction."""
    require_module("ai_edge_litert")
    root = tmp_path / "packages" / "artifacts" / "com.battwin.SohModel"
    real_version(root, "1.0.0")
    cfg = AgentConfig(
        thing_name="real-1", spool={"path": tmp_path / "s.db"}, health={"model_root": root, "model_poll_s": 3600}
    )
    src = SimulatorSource(SimulatorSettings(time_acceleration=1e6), interval_s=10)
    seen: list[tuple[str, object]] = []
    agent = Agent(cfg, src, MemoryTransport(), Spool(tmp_path / "s.db"), on_message=lambda k, b, i: seen.append((k, b)))
    try:
        mm = ModelManager(agent, store=agent.state)  # the default loader: load_hybrid_model
        mm.start()
        more(agent, 6000)
        before = [h for h in health_of(seen) if h[1] == "hybrid"]
        assert before and {h[2] for h in before} == {"m-1.0.0"}

        real_version(root, "1.0.1", kind)  # a newer version, broken
        mm.check_root(root, settle=True)
        mm.check_root(root, settle=True)  # settled: tried with every check, refused
        assert mm.refusals == 1 and mm.current_version == "m-1.0.0"
        mark = len(seen)
        more(agent, 6000)
        during = health_of(seen[mark:])
        assert len(during) >= 2 and {(m, v) for _, m, v in during} == {("hybrid", "m-1.0.0")}  # old one predicts
        rejected = [b for k, b in seen if k == "alarms" and b.code == "model_rejected"]  # type: ignore[attr-defined]
        assert len(rejected) == 1 and "1.0.1" in rejected[0].message and "still using m-1.0.0" in rejected[0].message

        real_version(root, "1.1.0")  # a good newer version: picked up between two polls
        mm.check_root(root, settle=True)
        mm.check_root(root, settle=True)
        mark = len(seen)
        more(agent, 6000)
        after = health_of(seen[mark:])
        assert len(after) >= 2 and {(m, v) for _, m, v in after} == {("hybrid", "m-1.1.0")}
        assert mm.current_dir == root / "1.1.0" and mm.refusals == 1
    finally:
        agent.shutdown(0)
        agent.close()
