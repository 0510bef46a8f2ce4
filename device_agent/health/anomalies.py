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

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from device_agent.config import AnomalySettings
from schema.messages import CycleRecord, Sample

AnomalyCode = Literal["capacity_drop", "resistance_jump", "abnormal_heating", "cell_drift"]
Detail = float | int | str | bool | None

#: the NASA cells the thresholds were tuned on (the first of each test group); the others are held out
NASA_TUNING_CELLS = ("B0025", "B0029", "B0033", "B0038", "B0042", "B0045", "B0049", "B0053")
#: an alarm clears once the judged value is back within this fraction of the threshold
CLEAR_FRACTION = 0.5


@dataclass(frozen=True)
class Finding:
    """An alarm to raise (``active``) or clear, with the evidence the raised alarm carries."""

    code: AnomalyCode
    active: bool
    ts: float
    message: str
    details: dict[str, Detail] = field(default_factory=dict)


@dataclass(frozen=True)
class _Observation:
    """One discharge as the record-based detectors see it."""

    index: int
    ts: float
    value: float
    current_a: float
    temperature_c: float | None


def _similar(a: _Observation, b: _Observation, s: AnomalySettings) -> bool:
    ref = max(abs(a.current_a), 1e-6)
    if abs(abs(a.current_a) - abs(b.current_a)) > s.similar_current_fraction * ref:
        return False
    if a.temperature_c is not None and b.temperature_c is not None:
        return abs(a.temperature_c - b.temperature_c) <= s.similar_temperature_c
    return True


class _RelativeStepDetector:
    """A value judged against the median of its recent similar values; raised after ``confirm`` records in a
    row past ``fraction`` (``direction`` -1: a drop, +1: a jump)."""

    code: AnomalyCode
    quantity: str
    unit: str

    def __init__(self, settings: AnomalySettings, direction: int) -> None:
        self.settings = settings
        self.direction = direction
        self.history: deque[_Observation] = deque(maxlen=settings.history_records)
        self.streak = 0
        self.active = False
        #: the candidate values of an unconfirmed streak, not yet in the history
        self.pending: list[_Observation] = []

    def _keep(self, obs: _Observation | None = None) -> None:
        """Move the pending values (and ``obs``) into the history."""
        self.history.extend(self.pending)
        self.pending.clear()
        if obs is not None:
            self.history.append(obs)

    def fraction(self) -> float:
        raise NotImplementedError

    def min_change(self) -> float:
        """The smallest change (in the value's unit) that counts, whatever the fraction."""
        return 0.0

    def confirm(self) -> int:
        raise NotImplementedError

    def baseline(self, obs: _Observation) -> tuple[float, int, float] | None:
        """The level expected at ``obs`` from the last ``baseline_records`` similar values before it (None: too
        few): their robust trend (Theil–Sen: median pairwise slope, median intercept) carried to ``obs``'s
        cycle, so a steady fade (or resistance growth) is expected rather than alarmed. The slope only ever
        carries the baseline away from the alarming side (a rise after regeneration is not projected)."""
        s = self.settings
        similar = [o for o in reversed(self.history) if _similar(obs, o, s)][: s.baseline_records]
        if len(similar) < s.min_baseline_records:
            return None
        slopes = [
            (b.value - a.value) / (b.index - a.index)
            for i, a in enumerate(similar)
            for b in similar[i + 1 :]
            if b.index != a.index
        ]
        slope = statistics.median(slopes) if slopes else 0.0
        if self.direction * slope < 0.0:
            slope = 0.0
        carried = [o.value + slope * (obs.index - o.index) for o in similar]
        level = statistics.median(carried)
        scatter = 1.4826 * statistics.median(abs(v - level) for v in carried)  # robust SD about the trend
        return level, len(similar), scatter

    def observe(self, obs: _Observation) -> list[Finding]:
        out: list[Finding] = []
        base = self.baseline(obs)
        if self.history.maxlen != self.settings.history_records:  # settings changed live
            self.history = deque(self.history, maxlen=self.settings.history_records)
        if base is None or base[0] <= 0.0:
            self._keep(obs)
            return out
        baseline, n, scatter = base
        change = self.direction * (obs.value - baseline) / baseline  # > 0: in the alarming direction
        limit = self.fraction()
        # past the fraction, past the absolute floor, and out of the baseline's own scatter
        step = abs(obs.value - baseline)
        beyond = step >= self.min_change() and step > self.settings.noise_sigmas * scatter
        if change > limit and beyond and not self.active:
            # a candidate: kept out of the baseline until it is confirmed (or turns out a one-off)
            self.streak += 1
            self.pending.append(obs)
        else:
            self.streak = 0
            self._keep(obs)
        if not self.active and self.streak >= self.confirm():
            self.active = True
            self._keep()  # confirmed: the new level enters the baseline, which re-levels on it
            word = "below" if self.direction < 0 else "above"
            out.append(
                Finding(
                    self.code,
                    True,
                    obs.ts,
                    f"{self.quantity} {obs.value:.4g} {self.unit} at cycle {obs.index} is {100 * change:.0f} % {word} "
                    f"its recent level {baseline:.4g} {self.unit} ({self.streak} discharge(s) in a row)",
                    {
                        "cycle": obs.index,
                        "value": round(obs.value, 5),
                        "baseline": round(baseline, 5),
                        "change_fraction": round(self.direction * change, 4),
                        "threshold_fraction": limit,
                        "baseline_records": n,
                        "baseline_scatter": round(scatter, 5),
                        "confirm_records": self.confirm(),
                        "current_a": round(obs.current_a, 3),
                        "temperature_c": None if obs.temperature_c is None else round(obs.temperature_c, 2),
                        "unit": self.unit,
                    },
                )
            )
        elif self.active and change < limit * CLEAR_FRACTION:
            self.active = False
            self.streak = 0
            out.append(Finding(self.code, False, obs.ts, f"{self.quantity} back at its recent level"))
        return out


class CapacityDrop(_RelativeStepDetector):
    code: AnomalyCode = "capacity_drop"
    quantity = "capacity"
    unit = "Ah"

    def __init__(self, settings: AnomalySettings) -> None:
        super().__init__(settings, -1)

    def fraction(self) -> float:
        return self.settings.capacity_drop_fraction

    def min_change(self) -> float:
        return self.settings.capacity_min_drop_ah

    def confirm(self) -> int:
        return self.settings.capacity_confirm_records

    def observe_record(self, record: CycleRecord) -> list[Finding]:
        if record.kind != "discharge" or not record.complete or record.capacity_ah is None:
            return []
        return self.observe(
            _Observation(
                record.index, record.end_ts, record.capacity_ah, record.mean_current_a, record.mean_temperature_c
            )
        )


class ResistanceJump(_RelativeStepDetector):
    code: AnomalyCode = "resistance_jump"
    quantity = "step resistance"
    unit = "ohm"

    def __init__(self, settings: AnomalySettings) -> None:
        super().__init__(settings, +1)

    def fraction(self) -> float:
        return self.settings.resistance_jump_fraction

    def confirm(self) -> int:
        return self.settings.resistance_confirm_records

    def observe_record(self, record: CycleRecord, rest_temperature_c: float | None) -> list[Finding]:
        if record.kind != "discharge" or record.resistance_ohm is None or record.resistance_ohm <= 0.0:
            return []
        # the step is measured at the start of the discharge: compare at the temperature it started at
        temp = rest_temperature_c if rest_temperature_c is not None else record.mean_temperature_c
        return self.observe(
            _Observation(record.index, record.start_ts, record.resistance_ohm, record.mean_current_a, temp)
        )


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


@dataclass
class _Band:
    reference: list[list[float]] = field(default_factory=list)  # per rest: each cell's deviation
    recent: deque[list[float]] = field(default_factory=deque)


class CellDrift:
    code: AnomalyCode = "cell_drift"
    #: at most this many voltage bands are remembered (bounded memory)
    MAX_BANDS = 64

    def __init__(self, settings: AnomalySettings, rest_current_a: float) -> None:
        self.settings = settings
        self.rest_current_a = rest_current_a
        self.bands: dict[int, _Band] = {}
        self.active = False
        self._active_band: int | None = None  # the band that raised the alarm is the one that clears it
        self._rest_start: float | None = None
        self._last_rest: Sample | None = None

    def observe(self, sample: Sample) -> list[Finding]:
        cells = sample.cell_voltages_v
        if not cells or len(cells) < 3:
            return []
        if abs(sample.current_a) < self.rest_current_a:
            if self._rest_start is None:
                self._rest_start = sample.ts
            self._last_rest = sample
            return []
        # the rest ended: judge its last (most relaxed) reading
        last, start = self._last_rest, self._rest_start
        self._rest_start, self._last_rest = None, None
        if last is None or start is None or last.ts - start < self.settings.drift_min_rest_s:
            return []
        return self.judge_rest(last)

    def judge_rest(self, sample: Sample) -> list[Finding]:
        s = self.settings
        cells = sample.cell_voltages_v or ()
        med = statistics.median(cells)
        deviation = [v - med for v in cells]
        key = int(statistics.fmean(cells) // s.drift_voltage_band_v)
        band = self.bands.get(key)
        if band is None:
            if len(self.bands) >= self.MAX_BANDS:
                return []
            band = self.bands[key] = _Band(recent=deque(maxlen=s.drift_recent_rests))
        if band.reference and len(band.reference[0]) != len(cells):
            band.reference.clear()  # the pack changed shape: start again
            band.recent.clear()
        if len(band.reference) < s.drift_reference_rests:
            band.reference.append(deviation)
            return []
        if band.recent.maxlen != s.drift_recent_rests:
            band.recent = deque(band.recent, maxlen=s.drift_recent_rests)
        band.recent.append(deviation)
        if len(band.recent) < s.drift_recent_rests:
            return []
        drifts = []
        for k in range(len(cells)):
            ref = statistics.median(r[k] for r in band.reference)
            now = statistics.median(r[k] for r in band.recent)
            drifts.append((abs(now - ref), k, ref, now))
        worst, cell, ref, now = max(drifts)
        if not self.active and worst > s.drift_v:
            self.active = True
            self._active_band = key
            return [
                Finding(
                    self.code,
                    True,
                    sample.ts,
                    f"cell {cell + 1} drifted {1000 * (now - ref):+.0f} mV from the pack median at rest "
                    f"(was {1000 * ref:+.0f} mV, now {1000 * now:+.0f} mV)",
                    {
                        "cell": cell + 1,
                        "deviation_v": round(now, 4),
                        "reference_deviation_v": round(ref, 4),
                        "drift_v": round(now - ref, 4),
                        "threshold_v": s.drift_v,
                        "band_mean_cell_v": round(key * s.drift_voltage_band_v, 3),
                        "reference_rests": len(band.reference),
                        "recent_rests": len(band.recent),
                    },
                )
            ]
        if self.active and key == self._active_band and worst < s.drift_v * CLEAR_FRACTION:
            self.active = False
            return [Finding(self.code, False, sample.ts, "cells back in line with their siblings")]
        return []


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


def count_raised(findings: Iterable[Finding]) -> dict[AnomalyCode, int]:
    """How many alarms of each code were raised (for reports)."""
    out: dict[AnomalyCode, int] = {}
    for f in findings:
        if f.active:
            out[f.code] = out.get(f.code, 0) + 1
    return out
