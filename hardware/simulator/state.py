"""What the physics simulator exposes at each step: the true state of a simulated pack.

Emulators of real BMS protocols (``devkit/bms_emulators``) read this to fill their frames, so values
evolve as a real battery's would. The agent's ``SimulatorSource`` turns it into a ``Sample``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PackState:
    t_s: float  # simulated seconds since the simulation started
    voltage_v: float  # measured pack terminal voltage (with sensor noise)
    current_a: float  # measured pack current, positive = charging (with sensor noise)
    cell_voltages_v: tuple[float, ...]  # measured, one per series cell
    temperatures_c: tuple[float, ...]  # measured: cell surface (one or more sensors)
    ambient_c: float
    soc_pct: float  # true state of charge, 0..100, relative to the current full capacity
    remaining_ah: float  # true remaining charge
    full_capacity_ah: float  # true current capacity C = C0 * exp(f_d)
    design_capacity_ah: float  # C0
    cycle_count: int  # completed full discharges counted by the simulator
    equivalent_full_cycles: float  # discharge throughput / C0
    resistance_ohm: float  # true pack series resistance now
    phase: str  # duty-cycle phase: "charge_cc", "charge_cv", "rest", "discharge"
