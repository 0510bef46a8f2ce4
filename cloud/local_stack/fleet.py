"""The demo fleet, declared as data, and how each member becomes a running edge agent.

Three kinds of battery, each through the real agent (tracker → estimator → spool → MQTT → shadow sync):

* :class:`~devkit.demo.FleetMember` — the physics simulator under a given stress (``devkit.demo.FLEET``);
* :class:`EmulatedBmsMember` — the simulator behind a BMS emulator on a pty, read by the real driver
  (JBD): the serial protocol, framing and decoding are real, the pack is simulated and tagged so;
* :class:`ReplayMember` — a real NASA PCoE log, replayed at a steady accelerated rate (real data, not tagged);
* :func:`bank_member` — a multi-pack core (``device_agent.packs``): one agent, one MQTT connection, N simulated
  packs, each its own thing ``<core>.<pack>`` with its own cycles, health and alarms.

Telemetry is thinned (``telemetry.decimation``) and batched so that each battery publishes about
:data:`PUBLISHED_SAMPLES_PER_S` samples in one message every :data:`BATCH_WALL_S` wall seconds, whatever the
acceleration: the cycle tracker still sees every sample.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.local_stack.sources import EmulatedBmsSource, PacedReplaySource
from device_agent.agent import Agent
from device_agent.config import AgentConfig, pack_thing_name
from device_agent.packs import MultiPackAgent
from device_agent.runtime import attach_config_sync, attach_model_manager, build_pack_runner, model_dir_for
from device_agent.shadow.mqtt_shadow import MqttShadowClient
from device_agent.uplink.mqtt_transport import MqttTransport
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.jbd import JbdEmulator
from devkit.demo import FleetMember
from devkit.demo_history import aged_settings, backfill
from hardware.registry import create_source
from hardware.replay import ReplaySource
from hardware.simulator.source import SimulatorSource
from hardware.source import Source
from schema.simulator_settings import SimulatorSettings

log = logging.getLogger("battwin.local_stack.fleet")

PUBLISHED_SAMPLES_PER_S = 20.0
BATCH_WALL_S = 2.0
SIM_POLLS_PER_S = 200.0  # simulator polls per wall second per battery (sets its simulated sample interval)
BMS_SIM_SECONDS_PER_POLL = 10.0  # simulated seconds between two reads (coarser misses discharge cut-offs)
#: one read of a JBD pack is two request/reply exchanges; the emulated pack must not step between them
MIN_BMS_POLL_S = 0.01

#: the repository's sibling ``shared/`` folder holds the lab data (see README, "Data")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_REPLAY_LOG = SHARED_DATA / "bms-logs" / "nasa_pcoe" / "B0036.csv.gz"


@dataclass(frozen=True)
class EmulatedBmsMember:
    name: str
    stress: str
    protocol: str
    simulator: dict[str, Any]
    life_cycles: int = 0  # cycles lived before the demo (devkit.demo_history)


@dataclass(frozen=True)
class ReplayMember:
    name: str
    stress: str
    log: Path
    rate_hz: float


EMULATED_BMS = EmulatedBmsMember(
    "bms-jbd-1", "JBD BMS emulator, 30 °C, 1C", "jbd", {"ambient_c": 30.0, "discharge_c_rate": 1.0}, 400
)


def replay_member(log_path: Path, rate_hz: float) -> ReplayMember:
    cell = log_path.name.split(".")[0]
    return ReplayMember(f"nasa-{cell.lower()}", f"NASA {cell} log (real data)", log_path, rate_hz)


@dataclass
class Connection:
    """How agents reach the broker and the shadow service."""

    broker_url: str
    shadow_root: str
    ca_file: Path | None = None
    #: IoT Core: a directory with ``<thing>/certificate.pem.crt`` and ``<thing>/private.pem.key``
    cert_dir: Path | None = None

    def mqtt(self, thing: str) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.broker_url}
        if self.ca_file is not None:
            out["ca_file"] = self.ca_file
        if self.cert_dir is not None:
            out["cert_file"] = self.cert_dir / thing / "certificate.pem.crt"
            out["key_file"] = self.cert_dir / thing / "private.pem.key"
        return out


def _telemetry(samples_per_wall_s: float, sim_s_per_sample: float) -> dict[str, Any]:
    decimation = max(1, min(10_000, round(samples_per_wall_s / PUBLISHED_SAMPLES_PER_S)))
    per_batch = max(1, min(1000, round(PUBLISHED_SAMPLES_PER_S * BATCH_WALL_S)))
    age = min(86_400.0, max(1.0, per_batch * decimation * sim_s_per_sample * 1.5))
    return {"batch_max_samples": per_batch, "batch_max_age_s": age, "decimation": decimation}


@dataclass
class Member:
    """A running fleet member: its agent and what it owns besides (an emulator)."""

    name: str
    kind: str
    stress: str
    agent: Agent | MultiPackAgent
    emulator: JbdEmulator | None = None

    @property
    def things(self) -> list[str]:
        """The thing names this member publishes as (a multi-pack core: one per pack)."""
        if isinstance(self.agent, MultiPackAgent):
            return [a.config.thing_name for a in self.agent.agents]
        return [self.name]

    @property
    def simulated(self) -> bool:
        if isinstance(self.agent, MultiPackAgent):
            return all(a.source.simulated for a in self.agent.agents)
        return self.agent.source.simulated

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
        self.agent.close()


#: where the local Greengrass deployment puts each com.battwin.SohModel version (cloud.local_stack.local_train)
MODEL_ROOT = Path("greengrass") / "packages" / "artifacts" / "com.battwin.SohModel"
MODEL_POLL_S = 2.0


def model_root(workdir: Path) -> Path:
    """The model component's artifact root the demo's agents watch (one for the fleet, as on one core device)."""
    return workdir / MODEL_ROOT


def _health(workdir: Path) -> dict[str, Any]:
    return {"model_root": model_root(workdir), "model_poll_s": MODEL_POLL_S}


def _agent(config: AgentConfig, source: Source, conn: Connection) -> Agent:
    transport = MqttTransport(config.mqtt, client_id=config.thing_name)
    agent = Agent(config, source, transport)
    attach_config_sync(agent, MqttShadowClient(transport, config.thing_name, config.shadow.name, conn.shadow_root))
    model_dir = model_dir_for(config)
    if model_dir is not None or config.health.model_root is not None:
        # the shipped hybrid model until the retraining loop deploys a version under the root: switched live
        agent.model_manager = attach_model_manager(agent, model_dir)
    return agent


def simulated_member(m: FleetMember, seed: int, conn: Connection, workdir: Path, accel: float, ageing: float) -> Member:
    # ≤ 10 simulated seconds per sample: coarser steps make the tracker miss discharge cut-offs
    interval = min(10.0, max(1.0, accel / SIM_POLLS_PER_S))
    sim = SimulatorSettings(
        seed=seed, time_acceleration=accel, ageing_factor=ageing, start_ts=time.time(), **m.simulator
    )
    sim, history = aged_settings(sim, m.life_cycles)
    config = AgentConfig(
        thing_name=m.name,
        source={"url": f"simulator:{m.name}", "sample_interval_s": interval, "simulator": sim.model_dump()},
        mqtt=conn.mqtt(m.name),
        tracker={"cells_series": sim.cells_series, "cutoff_voltage_per_cell_v": sim.discharge_cutoff_per_cell_v},
        telemetry=_telemetry(accel / interval, interval),
        spool={"path": workdir / f"{m.name}.db"},
        health=_health(workdir),
        shadow={"topic_root": conn.shadow_root},
    )
    source = SimulatorSource(sim, interval_s=interval, name=m.name)
    agent = _agent(config, source, conn)
    if history is not None and sim.start_ts is not None:
        backfill(agent, history, sim, sim.start_ts)
    return Member(m.name, "simulator", m.stress, agent)


def emulated_bms_member(
    m: EmulatedBmsMember, seed: int, conn: Connection, workdir: Path, accel: float, ageing: float
) -> Member:
    if m.protocol != "jbd":
        raise ValueError(f"no emulator wiring for protocol {m.protocol!r}")
    # the emulated pack runs at most 1000× (10 s per read, a read every 10 ms)
    bms_accel = min(accel, BMS_SIM_SECONDS_PER_POLL / MIN_BMS_POLL_S)
    wall_interval = BMS_SIM_SECONDS_PER_POLL / bms_accel
    sim = SimulatorSettings(seed=seed, time_acceleration=bms_accel, ageing_factor=ageing, **m.simulator)
    sim, history = aged_settings(sim, m.life_cycles)
    feed = PackFeed(sim, realtime=True, min_step_wall_s=wall_interval * 0.8)
    t0 = time.time()
    emulator = JbdEmulator(feed)
    pty = emulator.start()
    try:
        config = AgentConfig(
            thing_name=m.name,
            source={"url": f"jbd:{pty}?cells={sim.cells_series}&gap=0.005", "sample_interval_s": wall_interval},
            mqtt=conn.mqtt(m.name),
            tracker={"cells_series": sim.cells_series, "cutoff_voltage_per_cell_v": sim.discharge_cutoff_per_cell_v},
            telemetry=_telemetry(1.0 / wall_interval, BMS_SIM_SECONDS_PER_POLL),
            spool={"path": workdir / f"{m.name}.db"},
            health=_health(workdir),
            shadow={"topic_root": conn.shadow_root},
        )
        source = EmulatedBmsSource(create_source(config.source.url, config.source), bms_accel, t0=t0)
        agent = _agent(config, source, conn)
        if history is not None:
            backfill(agent, history, sim, t0)
        return Member(m.name, f"{m.protocol} driver + emulator", m.stress, agent, emulator)
    except BaseException:
        emulator.stop()
        raise


def replay_agent_member(m: ReplayMember, conn: Connection, workdir: Path, stop: threading.Event) -> Member:
    start_ts = math.floor(time.time())
    config = AgentConfig(
        thing_name=m.name,
        source={"url": f"replay:{m.log}", "replay_start_ts": start_ts},
        mqtt=conn.mqtt(m.name),
        telemetry={**_telemetry(m.rate_hz, 10.0), "batch_max_age_s": 86_400.0},
        spool={"path": workdir / f"{m.name}.db"},
        health=_health(workdir),
        shadow={"topic_root": conn.shadow_root},
    )
    source = PacedReplaySource(ReplaySource(m.log, start_ts=start_ts), m.rate_hz, stop)
    return Member(m.name, "replay", m.stress, _agent(config, source, conn))


#: the demo's multi-pack core: a home bank of packs bought together, a little apart in use and make
BANK_NAME = "demo-bank"
BANK_STRESS = "packs in parallel, 24-28 °C, 0.5C"
#: the bank's packs step 10 simulated seconds a sample at a tenth of the fleet's acceleration: 16 packs cost
#: what 1.6 of the other batteries do
BANK_ACCELERATION_DIVISOR = 10.0
BANK_TELEMETRY_THINNING = 10.0


def bank_member(packs: int, conn: Connection, workdir: Path, accel: float, ageing: float) -> Member:
    """A multi-pack core of ``packs`` simulated packs in parallel (ids ``p01``…), each at its own life stage
    (180 to 330 cycles lived, backfilled) and temperature; one MQTT connection for all."""
    if not 1 <= packs <= 64:
        raise ValueError("bank packs must be 1..64")
    bank_accel = max(1.0, accel / BANK_ACCELERATION_DIVISOR)
    interval = BMS_SIM_SECONDS_PER_POLL
    start = time.time()
    settings: list[tuple[str, SimulatorSettings, Any]] = []
    for k in range(1, packs + 1):
        pack_id = f"p{k:02d}"
        sim = SimulatorSettings(
            seed=500 + k,
            time_acceleration=bank_accel,
            ageing_factor=ageing,
            start_ts=start,
            ambient_c=24.0 + k % 5,  # where each pack sits in the cabinet
            discharge_c_rate=0.5,
        )
        life = 180 + (150 * (k - 1)) // max(1, packs - 1)
        aged, history = aged_settings(sim, life)
        settings.append((pack_id, aged, history))
    first = settings[0][1]
    config = AgentConfig(
        thing_name=BANK_NAME,
        source={"url": "simulator", "sample_interval_s": interval, "simulator": first.model_dump()},
        mqtt=conn.mqtt(BANK_NAME),
        tracker={"cells_series": first.cells_series, "cutoff_voltage_per_cell_v": first.discharge_cutoff_per_cell_v},
        # a tenth of a battery's published samples per pack: 16 packs add what 1.6 batteries do to the rules
        telemetry=_telemetry(bank_accel / interval * BANK_TELEMETRY_THINNING, interval),
        spool={"path": workdir / f"{BANK_NAME}.db"},
        health=_health(workdir),  # one model manager for the core: every pack switches to a retrained version
        shadow={"topic_root": conn.shadow_root},
        packs=[
            {
                "id": pack_id,
                "url": f"simulator:{pack_thing_name(BANK_NAME, pack_id)}",
                "source": {"simulator": sim.model_dump()},
            }
            for pack_id, sim, _ in settings
        ],
        bank={"arrangement": "parallel", "interval_s": 10.0},
    )
    runner = build_pack_runner(config, MqttTransport(config.mqtt, client_id=BANK_NAME))
    for agent, (_, sim, history) in zip(runner.agents, settings, strict=True):
        if history is not None:
            backfill(agent, history, sim, start)
    return Member(BANK_NAME, "multi-pack core (simulator)", BANK_STRESS, runner)
