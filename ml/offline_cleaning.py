"""Offline cleaning of a cell's capacities for training targets and the 'clean' score: every row labelled
with the whole series known (the device cleans causally: :mod:`device_agent.health.capacity_cleaning`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from device_agent.health.capacity_cleaning import clean_series
from device_agent.health.model_files import CleaningSpec
from ml.data import Cell

Label = Literal["ok", "failed", "high", "excursion", "low_regime", "spike"]
HAMPEL_HALF_WINDOW = 3
HAMPEL_SIGMAS = 3.0
HAMPEL_MIN_REL = 0.01


@dataclass(frozen=True)
class CleanSeries:
    """The valid rows of a cell with a label each; ``segment`` numbers the regimes (level shifts)."""

    index: np.ndarray  # row index in the file
    cycles: np.ndarray
    capacity_ah: np.ndarray
    label: np.ndarray  # Label per valid row
    segment: np.ndarray  # int per valid row

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.label == "ok")

    def counts(self) -> dict[str, int]:
        labels, n = np.unique(self.label, return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, n, strict=True)}


def clean_cell(cell: Cell, rules: CleaningSpec | None = None) -> CleanSeries:
    """Label every valid row of a cell (offline: the whole series is known). Rules, in order:

    1. invalid rows (missing, zero, negative capacity) are not in the series at all;
    2. the device's causal rules (``capacity_cleaning.clean_series``): a capacity below ``low_frac`` × the median of
       the last ``ref_points`` kept capacities is a failed run (``failed``), above ``high_frac`` × that
       median a gross outlier (``high``); ``shift_points`` of them in a row on one side start a new segment
       (regime); a regime the cell returns from is an ``excursion`` (e.g. a block of cold, high-current runs);
    3. a segment whose median capacity is below ``low_frac`` × the highest segment median is a regime the
       cell only visited (a block of runs at other conditions at the start): ``low_regime``;
    4. within the rest, a Hampel filter (centred window of 7, 3 robust sigmas and at least 1 %) marks
       isolated spikes — the first cycles of a capacity regeneration jump after a rest, stray readings —
       as ``spike``. Regeneration that decays over several cycles is real capacity and stays ``ok``.
    """
    rules = rules or CleaningSpec()
    idx = cell.valid_indices()
    cyc = cell.cycles[idx]
    cap = cell.capacity_ah[idx]
    state = clean_series(cap.tolist(), rules)
    label = np.array(state.label, dtype=object)
    segment = np.array(state.segment, dtype=int)
    ok = label == "ok"
    levels = {int(s): float(np.median(cap[ok & (segment == s)])) for s in np.unique(segment[ok])}
    if levels:
        top = max(levels.values())
        for s, lev in levels.items():
            if lev < rules.low_frac * top:
                label[ok & (segment == s)] = "low_regime"
    ok = label == "ok"
    for s in np.unique(segment[ok]):
        members = np.nonzero(ok & (segment == s))[0]
        vals = cap[members]
        for a, j in enumerate(members):
            lo, hi = max(0, a - HAMPEL_HALF_WINDOW), min(len(members), a + HAMPEL_HALF_WINDOW + 1)
            win = vals[lo:hi]
            if len(win) < 4:
                continue
            med = float(np.median(win))
            mad = 1.4826 * float(np.median(np.abs(win - med)))
            if abs(vals[a] - med) > max(HAMPEL_SIGMAS * mad, HAMPEL_MIN_REL * med):
                label[j] = "spike"
    return CleanSeries(index=idx, cycles=cyc, capacity_ah=cap, label=label.astype(str), segment=segment)
