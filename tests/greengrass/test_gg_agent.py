"""The edge agent under (emulated) Greengrass: in-process with IpcTransport, and as the component's
Run lifecycle executes it — the built artifact, the recipe's script and environment, interpolated."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.greengrass.ipc_limits import publish_payload_budget
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.runtime import build_transport
from devkit.nucleus.flavours import FLAVOURS
from devkit.nucleus.recipe import LifecycleContext, interpolate
from hardware.simulator.source import SimulatorSource
from schema.messages import Envelope, telemetry_samples
from schema.simulator_settings import SimulatorSettings
from tests.greengrass.gg_support import (
    AGENT,
    AGENT_RECIPE,
    MODEL,
    SHADOW_PREFIX,
    THING,
    agent_recipe,
    lite_lifecycle,
    load_yaml,
)
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
        IpcTransport(store_hold_s=0.0),  # far faster than real time; the store's hold: test_gg_lite_uplink.py
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
    batches = [len(telemetry_samples(e.body)) for e in envelopes if e.kind == "telemetry"]
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
    return ctx, lite_lifecycle(recipe, "amd64")  # the global lifecycle (classic picks the same one)


def _configuration(**merge: dict[str, Any]) -> dict[str, Any]:
    conf = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]
    for section, values in merge.items():
        conf[section] = {**conf.get(section, {}), **values} if isinstance(values, dict) else values
    return conf


def _step_env(
    ctx: LifecycleContext, lifecycle: dict[str, Any], step: dict[str, Any], extra: dict[str, str]
) -> dict[str, str]:
    # the component's environment: what the recipe sets (the lifecycle's Setenv, then the step's), on top of a
    # plain one (none of this process' Python knobs, no thing name but the nucleus')
    drop = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "AWS_IOT_THING_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATTWIN_") and k not in drop}
    for setenv in (lifecycle.get("Setenv", {}), step.get("Setenv", {})):
        env.update({k: interpolate(str(v), ctx.resolver(AGENT), strict=True) for k, v in setenv.items()})
    env.update(extra)
    return env


SHADOW = "battwin-config"


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_agent_publishes_through_basic_ingest_under_the_recipes_access_control(gg_env, tmp_path, flavour):
    """The recipe's default mqtt settings (Basic Ingest to the stack's rules) under the recipe's accessControl, as
    classic and lite match it: every kind goes to its own rule and nothing is refused (the emulator's side of Basic
    Ingest: tests/greengrass/test_gg_emulator_ipc.py)."""
    mqtt = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]["mqtt"]
    assert mqtt["basic_ingest_rule_prefix"] == "battwin"
    settings = SimulatorSettings(seed=5, time_acceleration=1e6, ageing_factor=10.0, start_ts=1.7e9)
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": settings.model_dump()},
        mqtt=mqtt,
        telemetry={"batch_max_samples": 100, "batch_max_age_s": 3600.0},
        alarms={"max_temperature_c": 20.0},  # an over_temperature alarm too
        spool={"path": tmp_path / "spool.db"},
    )
    agent = Agent(config, SimulatorSource(settings, interval_s=10.0), IpcTransport(store_hold_s=0.0))
    agent.run(threading.Event(), max_samples=3000)
    assert agent.spool.pending == 0
    topics = [m.topic for m in gg_env.published]
    kinds = {Envelope.model_validate_json(m.payload).kind for m in gg_env.published}
    assert kinds == {"telemetry", "cycles", "health", "alarms"}, kinds
    assert all(
        m.topic == f"$aws/rules/battwin_{Envelope.model_validate_json(m.payload).kind}/battwin/{THING}/"
        f"{Envelope.model_validate_json(m.payload).kind}"
        for m in gg_env.published
    ), set(topics)
    assert gg_env.denials == []
    # the budget counts the whole topic (its bytes are in the IPC frame and the MQTT packet)
    budget = publish_payload_budget(f"$aws/rules/battwin_telemetry/battwin/{THING}/telemetry")
    assert budget < publish_payload_budget(f"battwin/{THING}/telemetry")
    assert max(len(m.payload) for m in gg_env.published) <= budget


@pytest.mark.slow
def test_run_lifecycle_starts_the_agent_on_ipc(make_emulator, tmp_path):
    emulator = make_emulator(agent_recipe())  # the agreed accessControl: the shadow through IoT Core topics
    # a deployment that merges faster sampling and small batches into the default configuration
    ctx, lifecycle = _lifecycle(
        tmp_path, _configuration(source={"sample_interval_s": 0.02}, telemetry={"batch_max_samples": 5})
    )
    run = lifecycle["run"]
    script = interpolate(run["Script"], ctx.resolver(AGENT), strict=True)
    env = _step_env(ctx, lifecycle, run, emulator.env())  # AWS_IOT_THING_NAME from the nucleus
    proc = subprocess.Popen(
        ["sh", "-c", script], env=env, cwd=ctx.work_path(AGENT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        arrived = emulator.wait_for(lambda ms: any(m.topic.endswith("/telemetry") for m in ms), timeout=40)
        # live configuration through IoT Core's shadow topics (PublishToIoTCore / SubscribeToIoTCore, no
        # shadow IPC): the agent follows update/+, applies a desired change and reports it back
        following = emulator.wait_for_subscriptions("iot", f"{SHADOW_PREFIX}/update/+", 1, timeout=20)
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
    assert not [op for _, op in emulator.operations if op.endswith("ThingShadow")]
    # the recipe's default configuration publishes through Basic Ingest, which its accessControl allows (above:
    # no denials), each kind to its own rule of the cloud stack (ResourcePrefix battwin)
    kinds = {m.topic for m in emulator.published} - {f"{SHADOW_PREFIX}/get", f"{SHADOW_PREFIX}/update"}
    assert f"$aws/rules/battwin_telemetry/battwin/{THING}/telemetry" in kinds
    assert all(re.fullmatch(rf"\$aws/rules/battwin_(\w+)/battwin/{THING}/\1", t) for t in kinds), kinds
    telemetry = next(json.loads(m.payload) for m in emulator.published if m.topic.endswith("/telemetry"))
    assert telemetry["thing"] == THING and 1 <= len(telemetry_samples(telemetry["body"])) <= 5
    assert (ctx.work_path(AGENT) / "spool.db").is_file()  # BATTWIN_SPOOL__PATH → {work:path}/spool.db
    logged = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    # no model files in the SohModel artifact: the agent runs the model shipped in its own package
    alarms = [json.loads(m.payload)["body"] for m in emulator.published if m.topic.endswith("/alarms")]
    assert not any(a["code"] == "model_unavailable" for a in alarms)
    shipped = [r for r in logged if r.get("msg") == "health model loaded" and r.get("origin") == "shipped"]
    assert shipped, log[-2000:]
    assert any(rec.get("msg") == "agent starting" and rec.get("thing") == THING for rec in logged), log[-2000:]
    # the code ran from the unpacked artifact, not from this checkout: PYTHONPYCACHEPREFIX mirrors the
    # source paths of the modules that were imported
    cached = [p.as_posix() for p in (ctx.work_path(AGENT) / "pycache").rglob("agent*.pyc")]
    artifact = (ctx.decompressed_path(AGENT) / "battwin-agent" / "device_agent").as_posix()
    assert any(artifact.lstrip("/") in p for p in cached), cached
    assert not any((REPO / "device_agent").as_posix().lstrip("/") in p for p in cached), cached


@pytest.mark.slow
def test_run_lifecycle_without_a_thing_name_fails_clearly(emulator, tmp_path):
    ctx, lifecycle = _lifecycle(tmp_path, _configuration())
    run = lifecycle["run"]
    env = _step_env(ctx, lifecycle, run, {k: v for k, v in emulator.env().items() if k != "AWS_IOT_THING_NAME"})
    result = subprocess.run(
        ["sh", "-c", interpolate(run["Script"], ctx.resolver(AGENT), strict=True)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"AWS_IOT_THING_NAME" in result.stderr + result.stdout, result.stderr[-2000:]


def test_install_lifecycle_unpacks_a_zip_left_packed(tmp_path):
    """Lite's local deployment leaves the ZIP packed: install unpacks it into the work folder and runs the
    bootstrap from there; run then starts the agent from that copy."""
    ctx, lifecycle = _lifecycle(tmp_path, _configuration())
    install = lifecycle["install"]
    unpacked = ctx.decompressed_path(AGENT) / "battwin-agent"
    shutil.rmtree(unpacked)  # nothing unpacked by the nucleus; the ZIP is in {artifacts:path}
    # python3 as the device has it, except that the bootstrap call is recorded instead of building a venv
    shims = tmp_path / "bin"
    shims.mkdir()
    record = tmp_path / "bootstrap-args"
    (shims / "python3").write_text(
        f'#!/bin/sh\ncase "$1" in *bootstrap.py) echo "$@" > "{record}"; exit 0;; esac\nexec "{sys.executable}" "$@"\n'
    )
    (shims / "python3").chmod(0o755)
    env = _step_env(ctx, lifecycle, install, {})
    env["PATH"] = f"{shims}:{env['PATH']}"
    result = subprocess.run(
        ["sh", "-c", interpolate(install["Script"], ctx.resolver(AGENT), strict=True)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    app = ctx.work_path(AGENT) / "battwin-agent"
    assert (app / "device_agent" / "cli.py").is_file() and (app / "requirements" / "device.lock").is_file()
    venv = ctx.work_path(AGENT) / "venv"
    assert record.read_text().split() == [f"{app}/device_agent/bootstrap.py", "--app", str(app), "--venv", str(venv)]
    run = lifecycle["run"]  # the run step falls back to the same copy
    probe = interpolate(run["Script"], ctx.resolver(AGENT), strict=True).replace("exec ", 'echo "$PYTHONPATH" #', 1)
    shown = subprocess.run(
        ["sh", "-c", probe], env=_step_env(ctx, lifecycle, run, {}), capture_output=True, timeout=30, check=True
    )
    assert shown.stdout.decode().strip() == str(app)
