"""``battwin demo``: an embedded broker and a fleet of simulated batteries ageing live.

Each battery runs a complete edge agent (simulator → tracker → estimator → spool → MQTT) under a
different stress — temperature, depth of discharge, C-rate — and at a different life stage (a backfilled
past of 50 to 1200 cycles, see ``devkit.demo_history``), time-accelerated so that cycles happen within
minutes while each ages at a real cell's pace per cycle (``ageing`` 1). A monitor subscribes to
``battwin/+/+`` like the cloud would, and the terminal shows the fleet as the broker sees it.
Everything shown is simulated and says so.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import AgentConfig, MqttSettings
from device_agent.runtime import attach_config_sync, attach_model_manager, model_dir_for
from device_agent.shadow.mqtt_shadow import MqttShadowClient
from device_agent.shadow.topics import AMQTT_ROOT, AWS_ROOT
from device_agent.uplink.mqtt_transport import MqttTransport
from devkit.broker.embedded import EmbeddedBroker
from devkit.demo_history import aged_settings, backfill
from devkit.local_shadow import LocalShadowService
from hardware.simulator.source import SimulatorSource
from schema.messages import telemetry_samples
from schema.simulator_settings import SimulatorSettings


@dataclass(frozen=True)
class FleetMember:
    """One simulated battery of the demo fleet, declared as data."""

    name: str
    stress: str
    simulator: dict[str, Any]
    #: cycles lived before the demo starts (one a day), backfilled: see devkit.demo_history
    life_cycles: int = 0


FLEET: tuple[FleetMember, ...] = (
    FleetMember("sim-25c-1c", "25 °C, 1C, full depth", {"ambient_c": 25.0, "discharge_c_rate": 1.0}, 300),
    FleetMember("sim-45c-1c", "45 °C, 1C, full depth", {"ambient_c": 45.0, "discharge_c_rate": 1.0}, 100),
    FleetMember("sim-25c-2c", "25 °C, 2C, full depth", {"ambient_c": 25.0, "discharge_c_rate": 2.0}, 550),
    FleetMember(
        "sim-25c-dod50",
        "25 °C, 1C, 50 % depth",
        {"ambient_c": 25.0, "discharge_c_rate": 1.0, "depth_of_discharge": 0.5, "checkup_every": 4},
        50,
    ),
    FleetMember("sim-10c-pulse", "10 °C, pulsed 1C", {"ambient_c": 10.0, "discharge_profile": "pulse"}, 1200),
    FleetMember("sim-35c-1c5", "35 °C, 1.5C, full depth", {"ambient_c": 35.0, "discharge_c_rate": 1.5}, 200),
)


@dataclass
class ThingView:
    stress: str = ""
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    cycles: int = 0
    capacity_ah: float | None = None
    soh: float | None = None
    rul_cycles: float | None = None
    method: str = ""
    alarms: set[str] = field(default_factory=set)
    messages: int = 0
    simulated: bool = True
    last_seen: float = 0.0


class FleetMonitor:
    """Subscribes to every battwin topic and keeps the latest view per thing."""

    def __init__(self, broker_url: str) -> None:
        self.things: dict[str, ThingView] = {}
        self._lock = threading.Lock()
        self.transport = MqttTransport(MqttSettings(url=broker_url), client_id=f"battwin-monitor-{int(time.time())}")

    def start(self) -> None:
        self.transport.start()
        self.transport.subscribe("battwin/+/+", self._on_message)

    def stop(self) -> None:
        self.transport.stop()

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            env = json.loads(payload)
            thing, kind, body = env["thing"], env["kind"], env["body"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            view = self.things.setdefault(thing, ThingView())
            view.messages += 1
            view.last_seen = time.time()
            view.simulated = bool(env.get("simulated", False))
            try:
                samples = telemetry_samples(body) if kind == "telemetry" else []
            except (ValueError, KeyError):
                samples = []
            if samples:
                s = samples[-1]
                view.voltage_v, view.current_a = s["voltage_v"], s["current_a"]
                temps = s.get("temperatures_c") or []
                view.temperature_c = sum(temps) / len(temps) if temps else None
            elif kind == "cycles" and body.get("kind") == "discharge":
                view.cycles = max(view.cycles, int(body["index"]))
                if body.get("capacity_ah"):
                    view.capacity_ah = body["capacity_ah"]
            elif kind == "health":
                view.soh, view.rul_cycles, view.method = body["soh"], body.get("rul_cycles"), body["method"]
            elif kind == "alarms":
                (view.alarms.add if body.get("active") else view.alarms.discard)(body["code"])

    def table(self) -> str:
        def fmt(x: float | None, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        lines = [
            f"{'thing':<15} {'stress':<24} {'V':>6} {'I (A)':>7} {'T °C':>6} {'cycles':>6} "
            f"{'cap Ah':>7} {'SoH %':>6} {'RUL':>6} {'method':<8} alarms",
        ]
        with self._lock:
            for name in sorted(self.things):
                v = self.things[name]
                lines.append(
                    f"{name:<15} {v.stress[:24]:<24} {fmt(v.voltage_v, '.2f'):>6} {fmt(v.current_a, '.2f'):>7} "
                    f"{fmt(v.temperature_c, '.1f'):>6} {v.cycles:>6} {fmt(v.capacity_ah, '.3f'):>7} "
                    f"{fmt(None if v.soh is None else 100 * v.soh, '.1f'):>6} {fmt(v.rul_cycles, '.0f'):>6} "
                    f"{v.method:<8} {','.join(sorted(v.alarms)) or '-'}"
                )
        return "\n".join(lines)


def _agent_for(
    member: FleetMember, seed: int, broker_url: str, workdir: Path, accel: float, ageing: float, shadow_root: str
) -> Agent:
    sim = SimulatorSettings(
        seed=seed, time_acceleration=accel, ageing_factor=ageing, start_ts=time.time(), **member.simulator
    )
    sim, history = aged_settings(sim, member.life_cycles)
    config = AgentConfig(
        thing_name=member.name,
        source={"url": f"simulator:{member.name}", "sample_interval_s": 10.0, "simulator": sim.model_dump()},
        mqtt={"url": broker_url},
        tracker={"cells_series": sim.cells_series, "cutoff_voltage_per_cell_v": sim.discharge_cutoff_per_cell_v},
        telemetry={"batch_max_samples": 30, "batch_max_age_s": 300.0},
        spool={"path": workdir / f"{member.name}.db"},
        shadow={"topic_root": shadow_root},
    )
    source = SimulatorSource(sim, interval_s=config.source.sample_interval_s, name=member.name)
    transport = MqttTransport(config.mqtt, client_id=member.name)
    agent = Agent(config, source, transport)
    attach_config_sync(agent, MqttShadowClient(transport, member.name, config.shadow.name, shadow_root))
    model_dir = model_dir_for(config)
    if model_dir is not None:
        agent.model_manager = attach_model_manager(agent, model_dir)
    if history is not None and sim.start_ts is not None:
        backfill(agent, history, sim, sim.start_ts)
    return agent


def run_demo(
    duration_s: float | None = None,
    batteries: int = 4,
    broker_url: str | None = None,
    workdir: Path | None = None,
    acceleration: float = 2000.0,
    ageing: float = 1.0,
    **options: Any,
) -> int:
    # the full stack (cloud emulated locally + dashboard) lives in an optional package, reached by entry point
    full = next((ep for ep in entry_points(group="battwin.demo") if ep.name == "full"), None)
    if full is not None:
        try:
            run_full = full.load()
        except Exception as exc:  # not installed or broken: the device-only demo still runs
            logging.getLogger(__name__).warning("full-stack demo unavailable (%s); device-only demo", exc)
        else:
            return int(run_full(duration_s, batteries, broker_url, workdir, acceleration, ageing, **options))
    if options:
        print(f"battwin demo: ignoring {', '.join(sorted(options))} (full-stack demo not installed)", file=sys.stderr)
    if not 1 <= batteries <= len(FLEET):
        print(f"battwin demo: --batteries must be 1..{len(FLEET)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="battwin-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker().start() if broker_url is None else None
    url = broker.url if broker is not None else str(broker_url)
    # amqtt refuses client publishes to '$' topics: the embedded broker gets the shadow topics under another root
    shadow_root = AMQTT_ROOT if broker is not None else AWS_ROOT
    shadows = LocalShadowService(url, path=work / "shadows.json", topic_root=shadow_root).start()
    monitor = FleetMonitor(url)
    monitor.start()
    members = FLEET[:batteries]
    for m in members:
        monitor.things.setdefault(m.name, ThingView()).stress = m.stress
    agents = [_agent_for(m, k + 1, url, work, acceleration, ageing, shadow_root) for k, m in enumerate(members)]
    threads = [threading.Thread(target=a.run, args=(stop,), name=f"agent-{a.config.thing_name}") for a in agents]
    print(
        f"battwin demo: broker {url}, {len(agents)} simulated batteries, x{acceleration:g} time, "
        f"x{ageing:g} ageing. All data is SIMULATED. Ctrl-C to stop.",
        flush=True,
    )
    for t in threads:
        t.start()
    started = time.monotonic()
    tty = sys.stdout.isatty()
    try:
        while not stop.is_set():
            stop.wait(2.0)
            elapsed = time.monotonic() - started
            header = f"-- fleet after {elapsed:5.0f} s (simulated {elapsed * acceleration / 86400:.1f} days) --"
            text = header + "\n" + monitor.table()
            print(("\x1b[2J\x1b[H" if tty else "") + text, flush=True)
            if duration_s is not None and elapsed >= duration_s:
                stop.set()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        for a in agents:
            a.close()
        monitor.stop()
        shadows.stop()
        if broker is not None:
            broker.stop()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    print("battwin demo: stopped", flush=True)
    return 0
