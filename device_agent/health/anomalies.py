"""Anomalies judged on the device from the battery's own history: causal, bounded memory, no TensorFlow.

Four detectors, each a small class fed by :class:`AnomalyMonitor` (which the agent calls with every sample
and every cycle record) and each returning :class:`Finding` s: an alarm to raise (with its evidence: the
values compared, the baseline, the window) or to clear. Thresholds live in ``[anomalies]`` of the agent's
configuration (:class:`~device_agent.config.AnomalySettings`).

* :class:`CapacityDrop` — a complete discharge whose capacity is ``capacity_drop_fraction`` below the
  *baseline*: the last ``baseline_records`` similar discharges (mean current within
  ``similar_current_fraction``, mean temperature within ``similar_temperature_c``) carried to this cycle
  along their robust trend (Theil–Sen; a steady fade is expected, not alarmed), on
  ``capacity_confirm_records`` similar discharges in a row. One-sided: NASA cells regenerate capacity after
  rests (rises, never judged), and the median ignores the spike and the decay back to the trend. Blocks of
  cold or high-current runs are never compared with warm or gentle ones. Clears once a discharge is back
  within half the threshold of the (re-levelling) baseline.
* :class:`ResistanceJump` — the same scheme on the record's step resistance (ΔV/ΔI where the current steps
  from rest, measured by the cycle tracker), upwards, ``resistance_jump_fraction``.
* :class:`AbnormalHeating` — per discharge, the rise of the hottest sensor above the temperature at rest
  just before it, against the rise expected from the current: the baseline's rise per mean I² (median over
  similar discharges) times this discharge's mean I². Raised when the rise exceeds ``heating_factor`` × the
  expected rise *and* the expected rise by ``heating_min_excess_c``.
* :class:`CellDrift` — at the end of each rest of at least ``drift_min_rest_s`` (cells relaxed), every
  cell's deviation from the pack median; a cell's reference is the median of its first
  ``drift_reference_rests`` deviations in the same band of mean cell voltage (the spread of a healthy pack
  depends on state of charge); raised when the median of its last ``drift_recent_rests`` deviations in that
  band has moved ``drift_v`` from the reference.

False alarms on the NASA PCoE logs (30 cells, which have regeneration jumps, 4 A square-wave loads, cold
blocks and runs the lab marks as "very low capacity"): see ``tests/test_anomalies.py`` and the report in
``docs/anomalies.md``. Tuning cells (the thresholds were chosen on these only): :data:`NASA_TUNING_CELLS`.
"""

from __future__ import annotations

from device_agent.config import AnomalySettings
from device_agent.health.anomaly_drift import CellDrift
from device_agent.health.anomaly_findings import (
    CLEAR_FRACTION,
    AnomalyCode,
    Detail,
    Finding,
    _Observation,
    count_raised,
)
from device_agent.health.anomaly_heating import HEAT_GAP_S, AbnormalHeating, _Heat
from device_agent.health.anomaly_step import CapacityDrop, ResistanceJump
from schema.messages import CycleRecord, Sample

__all__ = [
    "CLEAR_FRACTION",
    "HEAT_GAP_S",
    "NASA_TUNING_CELLS",
    "AbnormalHeating",
    "AnomalyCode",
    "AnomalyMonitor",
    "CapacityDrop",
    "CellDrift",
    "Detail",
    "Finding",
    "ResistanceJump",
    "_Observation",
    "count_raised",
]

#: the NASA cells the thresholds were tuned on (the first of each test group); the others are held out
NASA_TUNING_CELLS = ("B0025", "B0029", "B0033", "B0038", "B0042", "B0045", "B0049", "B0053")


class AnomalyMonitor:
    """The four detectors behind one interface: :meth:`on_sample` for every sample, :meth:`on_record` for
    every cycle record; each returns the findings to raise or clear."""

    def __init__(self, settings: AnomalySettings, rest_current_a: float) -> None:
        self.settings = settings
        self.rest_current_a = rest_current_a
        self.capacity = CapacityDrop(settings)
        self.resistance = ResistanceJump(settings)
        self.heating = AbnormalHeating(settings)
        self.drift = CellDrift(settings, rest_current_a)
        self._heat: _Heat | None = None
        self._last_temp_c: float | None = None

    def apply(self, settings: AnomalySettings, rest_current_a: float) -> None:
        """New settings, live (the history is kept)."""
        self.settings = settings
        self.rest_current_a = rest_current_a
        for det in (self.capacity, self.resistance, self.heating, self.drift):
            det.settings = settings
        self.drift.rest_current_a = rest_current_a

    def on_sample(self, sample: Sample) -> list[Finding]:
        if not self.settings.enabled:
            return []
        self._track_heat(sample)
        return self.drift.observe(sample)

    def on_record(self, record: CycleRecord) -> list[Finding]:
        if not self.settings.enabled:
            return []
        heat = self._heat
        if record.kind == "discharge":
            # the stretch this record covers (the tracker emits the record a few samples after its end)
            if heat is not None and record.start_ts - HEAT_GAP_S <= heat.start_ts <= record.end_ts:
                self._heat = None
            else:
                heat = None
        else:
            heat = None
        rest_c = heat.rest_temperature_c if heat is not None else None
        out = self.capacity.observe_record(record)
        out += self.resistance.observe_record(record, rest_c)
        if heat is not None:
            out += self.heating.observe(record, rest_c, heat.peak_c, heat.mean_i2())
        return out

    def _track_heat(self, sample: Sample) -> None:
        temp = max(sample.temperatures_c) if sample.temperatures_c else None
        discharging = sample.current_a <= -self.rest_current_a
        heat = self._heat
        if heat is not None and not heat.closed:
            if not discharging and sample.ts - heat.last_active_ts > HEAT_GAP_S:
                heat.closed = True
            else:
                if sample.ts > heat.last_ts:
                    heat.i2_as += sample.current_a**2 * (sample.ts - heat.last_ts)
                heat.last_ts = sample.ts
                if discharging:
                    heat.last_active_ts = sample.ts
                    if temp is not None and (heat.peak_c is None or temp > heat.peak_c):
                        heat.peak_c = temp
        elif discharging:  # a new discharge stretch (an unconsumed earlier one is forgotten)
            self._heat = _Heat(sample.ts, self._last_temp_c, temp, sample.ts, sample.ts)
        if temp is not None:
            self._last_temp_c = temp
