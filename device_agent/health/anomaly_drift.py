"""Cell drift (:mod:`device_agent.health.anomalies`): a cell leaving its siblings, judged at the end of long
rests."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from device_agent.config import AnomalySettings
from device_agent.health.anomaly_findings import CLEAR_FRACTION, AnomalyCode, Finding
from schema.messages import Sample


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
