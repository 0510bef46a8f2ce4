"""Settings of the physics simulator (validated; part of the agent's config under ``[source.simulator]``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PosFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class SimulatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = 1
    cells_series: Annotated[int, Field(ge=1, le=32)] = 4
    capacity_ah: Annotated[float, Field(gt=0.0, le=2000.0)] = 2.0
    ambient_c: Annotated[float, Field(ge=-40.0, le=80.0)] = 25.0
    # duty cycle
    charge_c_rate: Annotated[float, Field(gt=0.0, le=5.0)] = 0.5
    charge_voltage_per_cell_v: Annotated[float, Field(ge=3.0, le=4.5)] = 4.2
    charge_cutoff_c_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    discharge_c_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    discharge_profile: Literal["cc", "pulse"] = "cc"
    discharge_cutoff_per_cell_v: Annotated[float, Field(ge=2.0, le=3.5)] = 2.7
    depth_of_discharge: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    checkup_every: Annotated[int, Field(ge=1, le=10_000)] = 10
    rest_after_charge_s: NonNegFloat = 600.0
    rest_after_discharge_s: NonNegFloat = 600.0
    # ageing: multiplies the fade and resistance-growth rates (1 = a real cell's pace)
    ageing_factor: Annotated[float, Field(gt=0.0, le=10_000.0)] = 1.0
    # life already lived when the simulation starts (hardware.simulator.life): discharge throughput in
    # equivalent full cycles and calendar age in days, aged in closed form at ambient temperature (0 = new)
    initial_equivalent_cycles: Annotated[float, Field(ge=0.0, le=100_000.0, allow_inf_nan=False)] = 0.0
    initial_age_days: Annotated[float, Field(ge=0.0, le=36_525.0, allow_inf_nan=False)] = 0.0
    # wall-clock pacing: simulated seconds per wall-clock second
    time_acceleration: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 1.0
    # sensor noise (standard deviations)
    noise_voltage_v: NonNegFloat = 0.002
    noise_current_a: NonNegFloat = 0.005
    noise_temperature_c: NonNegFloat = 0.1
    # a current sensor's constant offset (A), added to every current reading (the model's true current is not)
    current_offset_a: Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)] = 0.0
    # partial cycles: a charge also ends when the pack's true SoC reaches this fraction (1 = charge to full)
    charge_stop_soc: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # simulated clock start (Unix seconds); None = wall clock when the source opens
    start_ts: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
