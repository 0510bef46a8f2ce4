"""The edge agent under (emulated) Greengrass: in-process with IpcTransport, and as the component's
Run lifecycle executes it — the built artifact, the recipe's script and environment, interpolated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.greengrass.emulator.recipe import LifecycleContext, interpolate, select_manifest
from device_agent.greengrass.ipc_transport import IpcTransport, publish_payload_budget
from device_agent.messages import Envelope
from device_agent.runtime import build_transport
from hardware.simulator.settings import SimulatorSettings
from hardware.simulator.source import SimulatorSource
from tests.greengrass.gg_support import AGENT, AGENT_RECIPE, DELTA_TOPIC, MODEL, THING, load_yaml
from tests.support import REPO


def test_runtime_picks_the_ipc_transport_under_greengrass(gg_env):
    transport = build_transport(AgentConfig(thing_name=THING))
    assert isinstance(transport, IpcTransport)
    transport.stop()


def test_agent_publishes_everything_through_the_nucleus(gg_env, tmp_path):
    settings = SimulatorSettings(seed=7, time_acceleration=1e6, ageing_factor=10.0, start_ts=1.7e9)
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": settings.model_dump()},
        telemetry={"batch_max_samples": 50, "batch_max_age_s": 3600.0},
        spool={"path": tmp_path / "spool.db"},
    )
    accepted: dict[str, list[str]] = {"telemetry": [], "cycles": [], "health": [], "alarms": []}
    agent = Agent(
        config,
        SimulatorSource(settings, interval_s=10.0),
        IpcTransport(),
        on_message=lambda kind, body, msg_id: accepted[kind].append(msg_id),
    )
    stats = agent.run(threading.Event(), max_samples=3000)
    assert stats.samples == 3000
    assert agent.spool.pending == 0, "the agent stopped with messages the nucleus did not acknowledge"
    envelopes = [Envelope.model_validate_json(m.payload) for m in gg_env.published]
    for m, e in zip(gg_env.published, envelopes, strict=True):
        assert m.topic == f"battwin/{THING}/{e.kind}" and m.qos == 1 and m.component == AGENT
        assert e.thing == THING
        e.parsed_body()
    for kind, ids in accepted.items():
        got = list(dict.fromkeys(e.id for e in envelopes if e.kind == kind))
        assert got == ids, f"{kind}: sent {len(ids)}, the nucleus recorded {len(got)} (or out of order)"
    # batches close at 50 samples or earlier, before the envelope would exceed the IPC payload budget
    batches = [len(e.body["samples"]) for e in envelopes if e.kind == "telemetry"]
    assert sum(batches) == 3000 and max(batches) <= 50 and accepted["cycles"]
    budget = publish_payload_budget(f"battwin/{THING}/telemetry")
    assert max(len(m.payload) for m in gg_env.published) <= budget
    assert gg_env.denials == []


# -- the component's Run lifecycle ----------------------------------------------------------------
def _lifecycle(tmp_path: Path, configuration: dict[str, Any]) -> tuple[LifecycleContext, dict[str, Any]]:
    """A core-device layout: the built agent artifact unpacked, a 'venv' whose python is this one."""
    from components.build import build_agent_zip

    recipe = load_yaml(AGENT_RECIPE)
    ctx = LifecycleContext(
        THING,
        tmp_path / "gg",
        {AGENT: configuration, MODEL: {}},
        versions={AGENT: recipe["ComponentVersion"], MODEL: "1.0.0"},
    )
    zip_dir = ctx.artifacts_path(AGENT)
    zip_dir.mkdir(parents=True)
    with zipfile.ZipFile(build_agent_zip(zip_dir)) as zf:
        zf.extractall(ctx.decompressed_path(AGENT) / "battwin-agent")
    ctx.artifacts_path(MODEL).mkdir(parents=True)  # no model files: the agent runs physics-only and says so
    venv_bin = ctx.work_path(AGENT) / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return ctx, select_manifest(recipe, "linux", "amd64")["Lifecycle"]


def _configuration(**merge: dict[str, Any]) -> dict[str, Any]:
    conf = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]
    conf["thing_name"] = THING  # interpolateComponentConfiguration
    for section, values in merge.items():
        conf[section] = {**conf.get(section, {}), **values} if isinstance(values, dict) else values
    return conf


def _step_env(ctx: LifecycleContext, step: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    # the component's environment: what the recipe sets, on top of a plain one (none of this process' Python knobs)
    drop = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATTWIN_") and k not in drop}
    env.update({k: interpolate(str(v), ctx.resolver(AGENT), strict=True) for k, v in step.get("Setenv", {}).items()})
    env.update(extra)
    return env


SHADOW = "battwin-config"


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def test_run_lifecycle_starts_the_agent_on_ipc(emulator, tmp_path):
    # a deployment that merges faster sampling and small batches into the default configuration
    ctx, lifecycle = _lifecycle(
        tmp_path, _configuration(source={"sample_interval_s": 0.02}, telemetry={"batch_max_samples": 5})
    )
    run = lifecycle["Run"]
    script = interpolate(run["Script"], ctx.resolver(AGENT), strict=True)
    env = _step_env(ctx, run, emulator.env())
    proc = subprocess.Popen(
        ["sh", "-c", script], env=env, cwd=ctx.work_path(AGENT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        arrived = emulator.wait_for(lambda ms: any(m.topic.endswith("/telemetry") for m in ms), timeout=40)
        # live configuration through ShadowManager: the agent follows its delta topic, applies a desired
        # change and reports it back (the lead's config sync, over IpcShadowClient, within accessControl)
        following = emulator.wait_for_subscriptions("pubsub", DELTA_TOPIC, 1, timeout=20)
        reported = emulator.wait_for_shadow(lambda doc: bool(doc and doc["state"].get("reported")), SHADOW, timeout=20)
        emulator.update_shadow({"state": {"desired": {"telemetry": {"batch_max_samples": 3}}}}, SHADOW)
        applied = emulator.wait_for_shadow(
            lambda doc: _get(doc, "state", "reported", "telemetry", "batch_max_samples") == 3, SHADOW, timeout=20
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out.decode(errors="replace")
    assert arrived, log[-3000:]
    assert following and reported and applied, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    assert emulator.denials == []
    kinds = {m.topic for m in emulator.published}
    assert f"battwin/{THING}/telemetry" in kinds and all(t.startswith(f"battwin/{THING}/") for t in kinds)
    telemetry = next(json.loads(m.payload) for m in emulator.published if m.topic.endswith("/telemetry"))
    assert telemetry["thing"] == THING and 1 <= len(telemetry["body"]["samples"]) <= 5
    # no model files in the SohModel artifact: reported as an alarm, the agent keeps running on physics
    alarms = [json.loads(m.payload)["body"] for m in emulator.published if m.topic.endswith("/alarms")]
    assert any(a["code"] == "model_unavailable" for a in alarms)
    assert (ctx.work_path(AGENT) / "spool.db").is_file()  # BATTWIN_SPOOL__PATH → {work:path}/spool.db
    logged = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(rec.get("msg") == "agent starting" and rec.get("thing") == THING for rec in logged), log[-2000:]
    # the code ran from the unpacked artifact, not from this checkout: PYTHONPYCACHEPREFIX mirrors the
    # source paths of the modules that were imported
    cached = [p.as_posix() for p in (ctx.work_path(AGENT) / "pycache").rglob("agent*.pyc")]
    artifact = (ctx.decompressed_path(AGENT) / "battwin-agent" / "device_agent").as_posix()
    assert any(artifact.lstrip("/") in p for p in cached), cached
    assert not any((REPO / "device_agent").as_posix().lstrip("/") in p for p in cached), cached


def test_run_lifecycle_refuses_an_uninterpolated_thing_name(emulator, tmp_path):
    conf = _configuration()
    conf["thing_name"] = "{iot:thingName}"  # what a nucleus without interpolateComponentConfiguration passes
    ctx, lifecycle = _lifecycle(tmp_path, conf)
    run = lifecycle["Run"]
    result = subprocess.run(
        ["sh", "-c", interpolate(run["Script"], ctx.resolver(AGENT), strict=True)],
        env=_step_env(ctx, run, emulator.env()),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert b"interpolateComponentConfiguration" in result.stderr


def test_install_lifecycle_keeps_an_up_to_date_venv(tmp_path):
    ctx, lifecycle = _lifecycle(tmp_path, _configuration())
    install = lifecycle["Install"]
    venv = ctx.work_path(AGENT) / "venv"
    requirements = ctx.decompressed_path(AGENT) / "battwin-agent" / "requirements.txt"
    (venv / "battwin-requirements.txt").write_bytes(requirements.read_bytes())
    result = subprocess.run(
        ["sh", "-c", interpolate(install["Script"], ctx.resolver(AGENT), strict=True)],
        env=_step_env(ctx, install, {}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"is up to date" in result.stdout  # nothing was downloaded or rebuilt
    assert (venv / "bin" / "python").is_file()
