"""Causal cleaning of a cell's capacity history: what the hybrid model (:mod:`device_agent.health.hybrid`)
and the trainer (``ml.offline_cleaning.clean_cell``) both see as the cell's history. Only the past is used; the rules
are in :class:`~device_agent.health.model_files.CleaningSpec`. No numpy: plain floats."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from device_agent.health.fade_law import CapacityPoint
from device_agent.health.model_files import CleaningSpec


def valid_points(points: Sequence[CapacityPoint]) -> list[CapacityPoint]:
    """Finite capacities > 0 at finite, strictly increasing cycles (a repeated or earlier cycle is dropped)."""
    out: list[CapacityPoint] = []
    last = -math.inf
    for p in points:
        c = p.capacity_ah
        if not (math.isfinite(c) and c > 0.0 and math.isfinite(p.cycle)) or p.cycle <= last:
            continue
        out.append(p)
        last = p.cycle
    return out


@dataclass(slots=True)
class CleanState:
    """The causal cleaner's verdict on a series of capacities (see :func:`clean_series`)."""

    kept: list[int]  # indices of the current regime's kept capacities
    label: list[str]  # per capacity: ok | failed | high | excursion
    segment: list[int]  # per capacity: the regime it belongs to


def _median_of(values: Sequence[float]) -> float:
    s = sorted(values)
    m = len(s)
    return s[m // 2] if m % 2 else 0.5 * (s[m // 2 - 1] + s[m // 2])


def _level(caps: Sequence[float], idx: Sequence[int], n_ref: int) -> float:
    return _median_of([caps[q] for q in idx[-n_ref:]])


def clean_series(caps: Sequence[float], rules: CleaningSpec) -> CleanState:
    """Causal cleaning of valid capacities (> 0, finite), oldest first. Each capacity is compared with
    ``ref`` = median of the last ``ref_points`` kept ones:

    * within ``[low_frac, high_frac] × ref``: kept (``ok``);
    * otherwise set aside (``failed`` below, ``high`` above) — unless the cell dropped from a higher regime
      (a level shift down) and the capacity is back within those bounds of that regime: then the cell has
      returned, the lower regimes were an excursion (``excursion``, e.g. a block of cold high-current runs)
      and the earlier regime continues with this capacity;
    * ``shift_points`` set-aside capacities in a row on the same side: a level shift, a new regime starts
      at the first of them (after a drop, the previous regime is remembered for a return).
    """
    kept: list[int] = []
    prev_kept: list[int] | None = None
    prev_seg = -1
    pending: list[int] = []
    side = 0
    seg = 0
    label: list[str] = []
    segment: list[int] = []
    lo, hi, n_ref = rules.low_frac, rules.high_frac, rules.ref_points
    for j, c in enumerate(caps):
        label.append("ok")
        segment.append(seg)
        if not kept:
            kept.append(j)
            continue
        ref = _level(caps, kept, n_ref)
        d = -1 if c < lo * ref else (1 if c > hi * ref else 0)
        if d == 0:
            kept.append(j)
            pending.clear()
            side = 0
            continue
        if prev_kept is not None:
            pref = _level(caps, prev_kept, n_ref)
            if lo * pref <= c <= hi * pref:  # back to the regime before the shift
                for q in range(len(segment)):
                    if segment[q] == seg and label[q] == "ok":
                        label[q] = "excursion"
                for q in pending:
                    label[q] = "excursion"
                seg = prev_seg
                segment[j] = seg
                kept = [*prev_kept, j]
                prev_kept, pending, side = None, [], 0
                continue
        label[j] = "failed" if d < 0 else "high"
        if d != side:
            pending.clear()
            side = d
        pending.append(j)
        if len(pending) >= rules.shift_points:  # sustained: the cell runs at another level now
            # a drop remembers the higher regime it left (the cell may return to it); a rise keeps what is
            # remembered (a rise within a low excursion is still an excursion) and leaves a low start behind
            if side < 0 and (prev_kept is None or _level(caps, kept, n_ref) > _level(caps, prev_kept, n_ref)):
                prev_kept, prev_seg = kept, seg
            seg = max(segment) + 1
            for q in pending:
                label[q] = "ok"
                segment[q] = seg
            kept = list(pending)
            pending.clear()
            side = 0
    return CleanState(kept=kept, label=label, segment=segment)


def drop_dips(caps: Sequence[float], kept: Sequence[int], n_ref: int, dip_frac: float) -> list[int]:
    """``kept`` (indices into ``caps``, oldest first) without its dips: a capacity more than ``dip_frac`` below
    both the median of the ``n_ref`` kept capacities before it and that of the ``n_ref`` after it. A failed
    reading, not the cell: a cell does not lose and regain that much from one discharge to the next (a
    regeneration jump is a rise). Judged only with a capacity on each side: the newest is never a dip yet
    (holding a low newest capacity back until the next one cost NASA's held-out horizon RMSE 4.54 → 5.84 pp:
    real drops were held back too). The capacities after a point are what the device has measured since, never
    the future of the moment it forecasts from."""
    out: list[int] = []
    for q, j in enumerate(kept):
        before = [caps[i] for i in kept[max(0, q - n_ref) : q]]
        after = [caps[i] for i in kept[q + 1 : q + 1 + n_ref]]
        if before and after and caps[j] < (1.0 - dip_frac) * min(_median_of(before), _median_of(after)):
            continue
        out.append(j)
    return out


def causal_clean(points: Sequence[CapacityPoint], rules: CleaningSpec) -> list[CapacityPoint]:
    """The cleaned history of the cell's current regime, using only the past (see clean_series), without its
    dips (``rules.dip_frac``, :func:`drop_dips`)."""
    pts = valid_points(points)
    caps = [p.capacity_ah for p in pts]
    kept = clean_series(caps, rules).kept
    if rules.dip_frac is not None:
        kept = drop_dips(caps, kept, rules.ref_points, rules.dip_frac)
    return [pts[i] for i in kept]
