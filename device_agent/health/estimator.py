"""State of health and remaining useful life from the capacities the device measured itself.

The estimator keeps the history of measured capacities (one :class:`CapacityPoint` per complete
discharge), fixes C0 (the rated capacity if configured, else the median of the first
``c0_from_first`` measurements — the same rule the offline evaluation uses) and asks a
:class:`HealthModel` for a forecast. The physics model (the fitted fade law) is always there; a learned
model (the hybrid LSTM, see ``device_agent.health.hybrid``) plugs in through the same protocol and, if it
fails, the estimator falls back to physics and says so.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from device_agent.config import HealthSettings
from device_agent.health.fade_law import CapacityPoint, fit_fade, forecast_eol, forecast_step
from device_agent.health.intervals import Interval, health_interval
from schema.messages import CycleRecord, ForecastPoint, Health, HealthMethod

log = logging.getLogger(__name__)

MAX_FORECAST_POINTS = 50
MAX_HISTORY = 20_000


@dataclass(frozen=True)
class Forecast:
    """What a health model returns: SoH now, the SoH trajectory ahead, and the EOL cycle if reached."""

    soh_now: float
    cycles: Sequence[float]
    soh: Sequence[float]
    eol_cycle: float | None
    params: dict[str, float] = field(default_factory=dict)


class HealthModel(Protocol):
    method: HealthMethod
    version: str

    def forecast(
        self, points: Sequence[CapacityPoint], c0_ah: float, eol_threshold: float, max_cycles: int
    ) -> Forecast | None:
        """Forecast from the history (oldest first). None = not enough data yet."""


class ModelError(RuntimeError):
    """A learned model could not produce a forecast (bad input, interpreter failure)."""


class PhysicsModel:
    """The fade law C = C0·exp(f_d), fitted per cell (see fade_law)."""

    method: HealthMethod = "physics"
    version = "fade-law-1"

    def __init__(self, min_points: int = 3) -> None:
        self.min_points = min_points

    def forecast(
        self, points: Sequence[CapacityPoint], c0_ah: float, eol_threshold: float, max_cycles: int
    ) -> Forecast | None:
        if len(points) < self.min_points:
            return None
        fit = fit_fade(points)
        if fit is None:
            return None
        step = forecast_step(max_cycles)
        cycles, soh, eol = forecast_eol(fit, c0_ah, eol_threshold, max_cycles, step=step)
        soh_now = float(fit.fitted()[-1] / c0_ah)
        return Forecast(soh_now=soh_now, cycles=cycles.tolist(), soh=soh.tolist(), eol_cycle=eol, params=fit.params())


def c0_estimate(points: Sequence[CapacityPoint], settings: HealthSettings) -> float | None:
    if settings.rated_capacity_ah is not None:
        return settings.rated_capacity_ah
    first = [p.capacity_ah for p in points[: settings.c0_from_first]]
    if len(first) < min(settings.c0_from_first, 1):
        return None
    return statistics.median(first) if first else None


def _thin(
    cycles: Sequence[float], soh: Sequence[float], n: int, band: Interval | None = None
) -> tuple[ForecastPoint, ...]:
    """At most ``n`` points of the trajectory, spaced geometrically: dense in the near term, where a user
    looks first, sparse towards the far horizon; the first and the last point are always kept. The interval's
    bounds go to 4 decimals (0.01 pp: the health message stays within the IPC budget)."""
    if not cycles:
        return ()
    last = len(cycles) - 1
    if len(cycles) <= n:
        idx = list(range(len(cycles)))
    else:
        ratio = (last + 1) ** (1.0 / (n - 1))
        idx = sorted({min(last, round(ratio**k) - 1) for k in range(n)} | {0, last})
    lo, hi = (band.soh_lo, band.soh_hi) if band is not None else (None, None)
    return tuple(
        ForecastPoint(
            cycle=float(cycles[k]),
            soh=float(soh[k]),
            soh_lo=min(round(lo[k], 4), float(soh[k])) if lo is not None and math.isfinite(lo[k]) else None,
            soh_hi=max(round(hi[k], 4), float(soh[k])) if hi is not None and math.isfinite(hi[k]) else None,
        )
        for k in idx
        if math.isfinite(cycles[k]) and math.isfinite(soh[k])
    )


class HealthEstimator:
    """Collects measured capacities and publishes Health after each complete discharge."""

    def __init__(
        self,
        settings: HealthSettings,
        source_id: str,
        *,
        model: HealthModel | None = None,
        simulated: bool = False,
    ) -> None:
        self.settings = settings
        self.source_id = source_id
        self.simulated = simulated
        self.physics = PhysicsModel(settings.min_cycles_for_fit)
        self.model: HealthModel | None = model
        self.points: list[CapacityPoint] = []
        self.first_ts: float | None = None
        self.discharged_ah = 0.0
        self.last_error: str | None = None

    def restore(self, points: Sequence[CapacityPoint], first_ts: float | None, discharged_ah: float) -> None:
        self.points = list(points)[-MAX_HISTORY:]
        self.first_ts = first_ts
        self.discharged_ah = discharged_ah

    def set_model(self, model: HealthModel | None) -> None:
        self.model = model

    def observe(self, record: CycleRecord) -> CapacityPoint | None:
        """Account for a cycle record; return the new capacity point if it carried a capacity."""
        if self.first_ts is None:
            self.first_ts = record.start_ts
        if record.kind != "discharge":
            return None
        self.discharged_ah += record.charge_ah
        if not record.complete or record.capacity_ah is None or record.capacity_ah <= 0:
            return None
        point = CapacityPoint(
            cycle=float(record.index),
            capacity_ah=record.capacity_ah,
            elapsed_h=(record.end_ts - self.first_ts) / 3600.0,
            temperature_c=record.mean_temperature_c,
        )
        self.points.append(point)
        if len(self.points) > MAX_HISTORY:
            del self.points[0]
        return point

    def estimate(self, record: CycleRecord) -> Health | None:
        """Health after ``record`` (a complete discharge), or None if there is not enough history."""
        points = self.points
        if not points:
            return None
        c0 = c0_estimate(points, self.settings)
        if c0 is None or c0 <= 0:
            return None
        st = self.settings
        forecast: Forecast | None = None
        method: HealthMethod = "physics"
        version = self.physics.version
        self.last_error = None
        if self.model is not None:
            try:
                forecast = self.model.forecast(points, c0, st.eol_threshold, st.forecast_max_cycles)
                method, version = self.model.method, self.model.version
            except Exception as exc:  # a learned model must never take the agent down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("health model failed, using physics", extra={"error": self.last_error})
                forecast = None
        if forecast is None:
            method, version = "physics", self.physics.version
            forecast = self.physics.forecast(points, c0, st.eol_threshold, st.forecast_max_cycles)
        last = points[-1]
        measured_soh = last.capacity_ah / c0
        soh = forecast.soh_now if forecast is not None else measured_soh
        soh = min(max(soh, 0.0), 2.0)
        eol = forecast.eol_cycle if forecast is not None else None
        if soh < st.eol_threshold:  # already past end of life: no forecast needed, nothing remains
            eol = min(eol, last.cycle) if eol is not None else last.cycle
        rul = max(eol - last.cycle, 0.0) if eol is not None else None
        band = None
        if forecast is not None:
            band = health_interval(
                forecast.cycles,
                forecast.soh,
                soh_now=soh,
                params=forecast.params,
                method=method,
                model=self.model,
                history=points,
                threshold=st.eol_threshold,
                horizon=st.forecast_max_cycles,
            )
        return Health(
            ts=record.end_ts,
            cycle_index=record.index,
            equivalent_cycles=self.discharged_ah / c0,
            capacity_ah=last.capacity_ah,
            initial_capacity_ah=c0,
            soh=soh,
            eol_threshold=st.eol_threshold,
            eol_cycle=eol,
            rul_cycles=rul,
            rul_cycles_p10=band.rul_p10 if band else None,
            rul_cycles_p50=band.rul_p50 if band else None,
            rul_cycles_p90=band.rul_p90 if band else None,
            forecast=_thin(forecast.cycles, forecast.soh, MAX_FORECAST_POINTS, band) if forecast else (),
            method=method,
            model_version=version[:64],
            fit_params={k: v for k, v in (forecast.params if forecast else {}).items() if math.isfinite(v)},
            source_id=self.source_id,
            simulated=self.simulated,
        )
