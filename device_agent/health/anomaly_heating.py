"""Abnormal heating (:mod:`device_agent.health.anomalies`): a discharge's temperature rise against the rise
expected from its current."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from device_agent.config import AnomalySettings
from device_agent.health.anomaly_findings import CLEAR_FRACTION, AnomalyCode, Finding, _Observation, _similar
from schema.messages import CycleRecord

#: a discharge stretch (for the heating detector) ends after this long without a discharging sample
HEAT_GAP_S = 60.0


@dataclass
class _Heat:
    """What the samples of one discharge stretch say about heating (from the temperature just before it)."""

    start_ts: float
    rest_temperature_c: float | None
    peak_c: float | None
    last_ts: float
    last_active_ts: float
    i2_as: float = 0.0  # ∫ I² dt from the first discharging sample to the last (A²·s)
    closed: bool = False

    def mean_i2(self) -> float:
        span = self.last_active_ts - self.start_ts
        return self.i2_as / span if span > 0.0 else 0.0


class AbnormalHeating:
    code: AnomalyCode = "abnormal_heating"

    def __init__(self, settings: AnomalySettings) -> None:
        self.settings = settings
        self.history: deque[_Observation] = deque(maxlen=settings.history_records)  # value: rise per mean I²
        self.active = False

    def observe(
        self, record: CycleRecord, rest_temperature_c: float | None, peak_c: float | None, mean_i2: float
    ) -> list[Finding]:
        if record.kind != "discharge" or rest_temperature_c is None or peak_c is None or mean_i2 <= 0.0:
            return []
        s = self.settings
        rise = peak_c - rest_temperature_c
        obs = _Observation(record.index, record.end_ts, rise / mean_i2, record.mean_current_a, rest_temperature_c)
        similar = [o.value for o in reversed(self.history) if _similar(obs, o, s)][: s.baseline_records]
        if self.history.maxlen != s.history_records:
            self.history = deque(self.history, maxlen=s.history_records)
        self.history.append(obs)
        if len(similar) < s.min_baseline_records:
            return []
        per_i2 = statistics.median(similar)
        expected = max(per_i2 * mean_i2, 0.0)
        excess = rise - expected
        out: list[Finding] = []
        if not self.active and rise > s.heating_factor * expected and excess > s.heating_min_excess_c:
            self.active = True
            out.append(
                Finding(
                    self.code,
                    True,
                    record.end_ts,
                    f"temperature rose {rise:.1f} °C in discharge {record.index}; {expected:.1f} °C expected at its "
                    f"current (rms {mean_i2**0.5:.2f} A)",
                    {
                        "cycle": record.index,
                        "rise_c": round(rise, 2),
                        "expected_rise_c": round(expected, 2),
                        "rest_temperature_c": round(rest_temperature_c, 2),
                        "peak_temperature_c": round(peak_c, 2),
                        "rms_current_a": round(mean_i2**0.5, 3),
                        "baseline_rise_per_a2": round(per_i2, 5),
                        "baseline_records": len(similar),
                        "threshold_factor": s.heating_factor,
                        "threshold_excess_c": s.heating_min_excess_c,
                    },
                )
            )
        elif self.active and (rise <= s.heating_factor * expected or excess <= s.heating_min_excess_c * CLEAR_FRACTION):
            self.active = False
            out.append(Finding(self.code, False, record.end_ts, "heating back in proportion to the current"))
        return out
