"""A demo battery's life before the demo: backfilled history, so the fleet starts at different life stages.

A demo member declares ``life_cycles`` (the cycles it has lived, one a day). :func:`aged_settings` starts its
simulator aged accordingly (``initial_equivalent_cycles`` / ``initial_age_days``, the simulator's ageing model in
closed form — :mod:`hardware.simulator.life`), and :func:`backfill` hands the agent, before it runs, the
discharges a cycle tracker would have measured on the way: each goes through the agent's own record path
(spooled and published as a ``cycles`` message, its capacity point stored, health estimated and published,
health alarms evaluated, progress saved), stamped in the past (one cycle a day up to the demo's start) and tagged
simulated like everything a simulated battery sends. The agent then counts on from the last backfilled cycle.
"""

from __future__ import annotations

import logging
import time

from device_agent.agent import Agent
from hardware.simulator.cell import CellParameters
from hardware.simulator.life import LifeHistory, life_history
from schema.messages import CycleRecord
from schema.simulator_settings import SimulatorSettings

log = logging.getLogger("battwin.demo.history")

#: the life lived before the demo: one cycle a day (a home battery's pace)
CYCLES_PER_DAY = 1.0
#: measured discharges kept from that life (the first five, then evenly spaced)
MAX_POINTS = 60
SECONDS_PER_DAY = 86_400.0
NOMINAL_CELL_V = 3.7
TOP_CELL_V = 4.1


def aged_settings(sim: SimulatorSettings, life_cycles: int) -> tuple[SimulatorSettings, LifeHistory | None]:
    """The simulator settings of a pack that has lived ``life_cycles`` cycles, and that life (None if new)."""
    if life_cycles <= 0:
        return sim, None
    history = life_history(sim, CellParameters(), life_cycles, CYCLES_PER_DAY, MAX_POINTS)
    aged = sim.model_copy(
        update={"initial_equivalent_cycles": history.equivalent_cycles, "initial_age_days": history.age_days}
    )
    return aged, history


def records(history: LifeHistory, sim: SimulatorSettings, source_id: str, start_ts: float) -> list[CycleRecord]:
    """The measured discharges of ``history`` as the cycle tracker's records, the last one ending a day before
    ``start_ts`` at the latest."""
    cells, c0 = sim.cells_series, sim.capacity_ah
    out = []
    for p in history.points:
        t0 = start_ts - (history.cycles - (p.cycle - 1)) / history.cycles_per_day * SECONDS_PER_DAY
        current = p.c_rate * c0
        duration = 3600.0 * p.measured_ah / current
        out.append(
            CycleRecord(
                index=p.cycle,
                kind="discharge",
                start_ts=t0,
                end_ts=t0 + duration,
                duration_s=duration,
                charge_ah=p.measured_ah,
                energy_wh=p.measured_ah * NOMINAL_CELL_V * cells,
                capacity_ah=p.measured_ah,
                complete=True,
                cutoff_voltage_v=sim.discharge_cutoff_per_cell_v * cells,
                start_voltage_v=TOP_CELL_V * cells,
                end_voltage_v=sim.discharge_cutoff_per_cell_v * cells,
                min_voltage_v=sim.discharge_cutoff_per_cell_v * cells,
                max_voltage_v=TOP_CELL_V * cells,
                mean_current_a=-current,
                mean_temperature_c=p.mean_temperature_c,
                max_temperature_c=p.max_temperature_c,
                n_samples=max(1, round(duration / 10.0)),
                source_id=source_id,
                simulated=True,
            )
        )
    return out


def backfill(agent: Agent, history: LifeHistory, sim: SimulatorSettings, start_ts: float) -> int:
    """Run the life lived through ``agent`` (before ``agent.run``); returns the number of records backfilled."""
    if not agent.source.simulated:
        raise ValueError(f"{agent.config.thing_name}: only a simulated battery gets a simulated past")
    t = time.perf_counter()
    recs = records(history, sim, agent.source.source_id, start_ts)
    c0 = sim.capacity_ah
    for point, rec in zip(history.points, recs, strict=True):
        agent.tracker.cycle = rec.index
        # the throughput of the discharges between the measured ones (the estimator adds this one's)
        agent.estimator.discharged_ah = point.equivalent_cycles * c0
        agent._on_record(rec)  # the agent's own record path: spool, capacity point, health, alarms, progress
    agent.tracker.cycle = history.cycles
    agent.estimator.discharged_ah = history.equivalent_cycles * c0
    agent.progress.save()
    log.info(
        "backfilled a simulated life",
        extra={
            "thing": agent.config.thing_name,
            "cycles": history.cycles,
            "equivalent_cycles": round(history.equivalent_cycles, 1),
            "records": len(recs),
            "wall_s": round(time.perf_counter() - t, 3),
        },
    )
    return len(recs)
