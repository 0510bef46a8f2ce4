"""Accelerating fade ("knee") detected from a cell's own capacity history (numpy only: runs on the device).

Why
---
The fade law (:mod:`device_agent.health.fade_law`) is one power law in the (Arrhenius-weighted) cycle
count, fitted to the whole history with a prior on its shape that favours linear fade. A cell whose fade
accelerates late in life (the fast-charged MIT cells; some TJU/HUST/XJTU cells) has a history that is
mostly slow fade and only a short steep tail: the fit follows the long slow part, and its extrapolation
keeps the old, slower rate (or, with a decelerating shape, flattens) past the knee. After a knee the
forecast must fall at least as fast as the measured post-knee slope.

Test (causal: only the points up to now)
-----------------------------------------
On the log capacity ``y`` of the valid history (oldest first, ``n`` points):

* the *recent* window is the last ``m = max(MIN_WINDOW, n // WINDOW_DIV)`` points, the *earlier* part
  every point before it (at least as many: ``2·MIN_WINDOW`` points are needed);
* each window's slope is robust: the difference of the medians of its two halves over the difference of
  their median cycles (a regeneration jump or a failed run moves a median little);
* the noise scale ``σ`` is the median absolute deviation of the successive differences of ``y`` (× 1.4826
  / √2: the per-point scatter);
* a knee is declared when the recent slope is falling (``s_r < 0``), at least ``SLOPE_RATIO`` times the
  earlier slope (``s_r < SLOPE_RATIO · min(s_o, 0)``), and the recent points lie below the earlier trend
  carried forward: the median of the recent window's second half is below the earlier window's robust
  line (at slope ``min(s_o, 0)``, through its second-half medians) by at least ``MIN_EVIDENCE_SIGMAS · σ``
  and at least ``MIN_EXTRA_DROP`` in log capacity (the minimum evidence rule: noise does not make a knee,
  nor does a regeneration jump, which decays back to the trend from above it).

What the forecast does with it
------------------------------
:class:`Knee` carries the post-knee slope, as a fraction of the capacity at the anchor per cycle, and
the anchor (the recent window's robust line at the last cycle). The projection after a knee is
``C(t) = min(law(t), C_anchor · (1 + slope · (t − t_last)))``: linear in capacity at the post-knee slope
(never decelerating), or the fade law where that falls faster still.

The parameters are set a priori from the physics of the question (a knee is a doubling of the fade rate
over the last sixth of the history (at least 15 points), clear of the scatter), not tuned on any dataset's test cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_WINDOW = 15
WINDOW_DIV = 6
SLOPE_RATIO = 2.0
MIN_EVIDENCE_SIGMAS = 4.0
MIN_EXTRA_DROP = 0.02  # the recent points 2 % of capacity below the earlier trend carried forward
MIN_POINTS = 2 * MIN_WINDOW


@dataclass(frozen=True, slots=True)
class Knee:
    """A detected acceleration of the fade, and the post-knee trend to extrapolate."""

    #: first cycle of the recent (post-knee) window
    onset_cycle: float
    #: d(C / C_anchor) / d cycle of the recent window (< 0)
    slope_per_cycle: float
    #: the recent window's robust line at the last cycle (Ah)
    anchor_ah: float
    anchor_cycle: float
    #: recent slope / earlier slope (inf when the earlier window did not fall)
    ratio: float
    #: extra drop over the recent window in units of the scatter
    evidence_sigmas: float

    def project(self, cycles: np.ndarray) -> np.ndarray:
        """Capacity (Ah) along the post-knee line, linear in capacity; never below 0."""
        h = np.maximum(np.asarray(cycles, dtype=float) - self.anchor_cycle, 0.0)
        return np.asarray(self.anchor_ah * np.maximum(1.0 + self.slope_per_cycle * h, 0.0))

    def params(self) -> dict[str, float]:
        return {
            "knee_onset_cycle": self.onset_cycle,
            "knee_slope_per_cycle": self.slope_per_cycle,
            "knee_ratio": self.ratio if math.isfinite(self.ratio) else 1e6,
            "knee_evidence_sigmas": self.evidence_sigmas,
        }


def _robust_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, x_mid, y_mid) from the medians of the two halves of a window."""
    h = len(x) // 2
    x1, x2 = float(np.median(x[:h])), float(np.median(x[h:]))
    y1, y2 = float(np.median(y[:h])), float(np.median(y[h:]))
    if x2 <= x1:
        return 0.0, x2, y2
    return (y2 - y1) / (x2 - x1), x2, y2


def recent_log_slope(cycles: Sequence[float] | np.ndarray, capacities: Sequence[float] | np.ndarray) -> float:
    """The measured recent trend: the robust slope of log capacity per cycle over the recent window (the last
    ``max(MIN_WINDOW, n // WINDOW_DIV)`` valid points, all of them when fewer); 0 with < 4 points."""
    c = np.asarray(cycles, dtype=float)
    q = np.asarray(capacities, dtype=float)
    ok = np.isfinite(c) & np.isfinite(q) & (q > 0)
    c, q = c[ok], q[ok]
    n = len(c)
    if n < 4:
        return 0.0
    m = min(max(MIN_WINDOW, n // WINDOW_DIV), n)
    return float(_robust_slope(c[-m:], np.log(q[-m:]))[0])


def detect_knee(cycles: Sequence[float] | np.ndarray, capacities: Sequence[float] | np.ndarray) -> Knee | None:
    """The knee test above on a history (oldest first); None when no knee (or too little history)."""
    c = np.asarray(cycles, dtype=float)
    q = np.asarray(capacities, dtype=float)
    ok = np.isfinite(c) & np.isfinite(q) & (q > 0)
    c, q = c[ok], q[ok]
    n = len(c)
    if n < MIN_POINTS or np.any(np.diff(c) < 0):
        return None
    y = np.log(q)
    m = max(MIN_WINDOW, n // WINDOW_DIV)
    m = min(m, n // 2)
    rx, ry = c[-m:], y[-m:]
    ox, oy = c[:-m], y[:-m]
    s_r, x_mid, y_mid = _robust_slope(rx, ry)
    s_o, xo_mid, yo_mid = _robust_slope(ox, oy)
    if not s_r < 0.0:
        return None
    if s_r >= SLOPE_RATIO * min(s_o, 0.0):
        return None
    span = float(rx[-1] - rx[0])
    if span <= 0:
        return None
    d = np.diff(y)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    # how far the recent points lie below the earlier trend carried forward (a regeneration jump decaying
    # back to the trend lies above it, a knee below)
    extra = yo_mid + min(s_o, 0.0) * (x_mid - xo_mid) - y_mid
    evidence = extra / sigma if sigma > 0 else math.inf
    if extra < MIN_EXTRA_DROP or evidence < MIN_EVIDENCE_SIGMAS:
        return None
    last = float(c[-1])
    anchor_log = y_mid + s_r * (last - x_mid)
    # the slope in log capacity at the anchor is the slope of C/C_anchor there
    return Knee(
        onset_cycle=float(rx[0]),
        slope_per_cycle=float(s_r),
        anchor_ah=float(math.exp(anchor_log)),
        anchor_cycle=last,
        ratio=float(s_r / s_o) if s_o < 0 else math.inf,
        evidence_sigmas=float(evidence),
    )
