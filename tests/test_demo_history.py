"""The demo fleet's life stages: a backfilled, simulated past through the agent's own record path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud.local_stack.fleet import EMULATED_BMS
from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from devkit.demo import FLEET
from devkit.demo_history import aged_settings, backfill
from hardware.simulator.cell import CellParameters
from hardware.simulator.life import aged_fade
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings


def _agent(tmp_path: Path, sim: SimulatorSettings) -> Agent:
    config = AgentConfig(
        thing_name="sim-life",
        source={"url": "simulator:sim-life", "sample_interval_s": 10.0, "simulator": sim.model_dump()},
        tracker={"cells_series": sim.cells_series, "cutoff_voltage_per_cell_v": sim.discharge_cutoff_per_cell_v},
        spool={"path": tmp_path / "spool.db"},
        shadow={"enabled": False},
    )
    source = SimulatorSource(sim, interval_s=10.0, name="sim-life")
    return Agent(config, source, MemoryTransport(), Spool(tmp_path / "spool.db"))


def test_backfill_gives_the_agent_and_the_cloud_a_simulated_past(tmp_path: Path) -> None:
    start = float(int(time.time()))
    sim, history = aged_settings(SimulatorSettings(seed=4, start_ts=start, ambient_c=35.0), 300)
    assert history is not None
    assert sim.initial_equivalent_cycles == history.equivalent_cycles and sim.initial_age_days == 300.0
    agent = _agent(tmp_path, sim)
    n = backfill(agent, history, sim, start)
    assert n == len(history.points) <= 60
    # the agent counts on from the last cycle lived and fits the whole past
    assert agent.tracker.cycle == 300
    assert len(agent.estimator.points) == n
    assert agent.estimator.discharged_ah == pytest.approx(history.equivalent_cycles * 2.0)
    # what it will publish: one cycles message per measured discharge and a health estimate after each
    # (from the third on: the fit needs three points), stamped in the past, every one tagged simulated
    msgs = [json.loads(m.payload) for m in agent.spool.peek(10_000)]
    kinds = [m["kind"] for m in msgs]
    assert kinds.count("cycles") == n and kinds.count("health") >= n - 2
    assert all(m["body"]["simulated"] is True for m in msgs)
    assert all(m["ts"] < start for m in msgs)
    health = [m["body"] for m in msgs if m["kind"] == "health"]
    last = health[-1]
    assert last["cycle_index"] == history.points[-1].cycle
    true_soh = aged_fade(sim, CellParameters(), history.equivalent_cycles, history.age_days).fade
    assert last["soh"] == pytest.approx(true_soh, abs=0.03)
    assert last["equivalent_cycles"] == pytest.approx(history.points[-1].equivalent_cycles, rel=0.05)
    # the discharges ran warmer than the 35 °C around them, as the live ones do (self-heating)
    cycles = [m["body"] for m in msgs if m["kind"] == "cycles"]
    assert all(36.0 < c["mean_temperature_c"] < c["max_temperature_c"] < 50.0 for c in cycles)
    agent.close()
    # a restart keeps the past (the agent's progress state)
    again = _agent(tmp_path, sim)
    assert again.tracker.cycle == 300 and len(again.estimator.points) == n
    again.close()


def test_a_real_battery_gets_no_simulated_past(tmp_path: Path) -> None:
    sim, history = aged_settings(SimulatorSettings(), 20)
    assert history is not None
    agent = _agent(tmp_path, sim)
    agent.source.simulated = False  # as a replay of a real log would say
    with pytest.raises(ValueError, match="simulated past"):
        backfill(agent, history, sim, time.time())
    agent.close()


def test_the_demo_fleet_spans_life_stages() -> None:
    """The fleet `make demo` shows starts spread over its life: new, middle-aged and close to end of life."""
    members = [(m.name, m.simulator, m.life_cycles) for m in FLEET] + [
        (EMULATED_BMS.name, EMULATED_BMS.simulator, EMULATED_BMS.life_cycles)
    ]
    soh = {}
    for name, kw, cycles in members:
        sim, history = aged_settings(SimulatorSettings(**kw), cycles)
        assert history is not None, name
        soh[name] = aged_fade(sim, CellParameters(), sim.initial_equivalent_cycles, sim.initial_age_days).fade
    assert max(soh.values()) > 0.95  # one nearly new
    assert sum(0.80 <= s < 0.85 for s in soh.values()) >= 3  # a few approaching the 80 % end of life
    assert min(soh.values()) >= 0.80  # none dead at the start
    assert sorted({m[2] for m in members}) == [50, 100, 200, 300, 400, 550, 1200]
