"""The relative-step detectors of :mod:`device_agent.health.anomalies`: a discharge's value judged against the
robust trend of its recent similar discharges — :class:`CapacityDrop` (downwards) and :class:`ResistanceJump`
(upwards)."""

from __future__ import annotations

import statistics
from collections import deque

from device_agent.config import AnomalySettings
from device_agent.health.anomaly_findings import CLEAR_FRACTION, AnomalyCode, Finding, _Observation, _similar
from schema.messages import CycleRecord


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
