"""The fleet view, an operator's first screen: what :func:`overview` builds from the API's answers.

* **SoH distribution**: the fleet's SoH values (each battery's newest Health, as ``/devices`` lists it) counted
  in bins of :data:`SOH_BIN` (2 percentage points, ``lo <= SoH < hi``), from the lowest occupied bin to the
  highest, empty bins included;
* **at risk**: the batteries with a remaining-useful-life forecast, ranked by RUL (fewest cycles first; ties by
  SoH, then name), with the 80 % interval (p10–p90) when the Health carries it; the others are counted;
* **fade curves**: every battery's measured SoH per complete discharge (capacity / C0, C0 = the newest Health's
  ``initial_capacity_ah``) against its cycle number, all on one chart, at most :data:`CURVE_POINTS` points each
  (evenly thinned, the newest kept);
* **alarms over time**: the newest :data:`OVERVIEW_ALARMS` alarm records of the fleet; the raises counted in
  :data:`ALARM_BINS` equal time bins between the first and the last.

The response stays under ``max_bytes`` (:data:`MAX_OVERVIEW_BYTES`, 5 MB like the API's pages): if it would not,
the curves and the alarm list are thinned (halved until it fits, then dropped), and ``limits`` says so.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

MAX_OVERVIEW_BYTES = 5 * 1024 * 1024
CURVE_POINTS = 200
OVERVIEW_ALARMS = 2000
AT_RISK_ROWS = 1000
SOH_BIN = 0.02
ALARM_BINS = 24
BIN_NAMES = 50  # names listed per histogram bin (the count is always complete)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def soh_histogram(values: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """(thing, SoH) pairs counted in bins of :data:`SOH_BIN`, lowest to highest occupied bin."""
    if not values:
        return []
    # the small epsilon keeps a value on a bin edge (0.80 stored as 0.7999999) in the bin it names
    index = {thing: math.floor(soh / SOH_BIN + 1e-9) for thing, soh in values}
    lo, hi = min(index.values()), max(index.values())
    bins = []
    for k in range(lo, hi + 1):
        names = sorted(t for t, i in index.items() if i == k)
        bins.append(
            {
                "lo": round(k * SOH_BIN, 6),
                "hi": round((k + 1) * SOH_BIN, 6),
                "count": len(names),
                "things": names[:BIN_NAMES],
            }
        )
    return bins


def _thin(xs: list[Any], n: int) -> list[Any]:
    if n <= 0:
        return []
    if len(xs) <= n:
        return xs
    if n == 1:
        return xs[-1:]
    step = (len(xs) - 1) / (n - 1)  # > 1: n distinct, evenly spaced indices, the first and the newest included
    return [xs[round(k * step)] for k in range(n)]


def fade_curve(cycles: list[dict[str, Any]], c0: float | None) -> list[tuple[float, float]]:
    """(cycle, capacity / C0) of each complete discharge with a capacity, by cycle number."""
    if c0 is None or c0 <= 0:
        return []
    pts = {}
    for c in cycles:
        cap, idx = _num(c.get("capacity_ah")), _num(c.get("index"))
        if c.get("kind") == "discharge" and c.get("complete") and cap is not None and cap > 0 and idx is not None:
            pts[idx] = cap / c0
    return sorted(pts.items())


def alarm_bins(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The raises among ``events`` counted in :data:`ALARM_BINS` equal time bins (first to last raise)."""
    stamps = [e["ts"] for e in events if e["active"] and e["ts"] is not None]
    if not stamps:
        return []
    t0, t1 = min(stamps), max(stamps)
    width = (t1 - t0) / ALARM_BINS or 1.0
    bins: list[dict[str, Any]] = [
        {"t0": t0 + k * width, "t1": t0 + (k + 1) * width, "count": 0, "codes": {}} for k in range(ALARM_BINS)
    ]
    for e in events:
        if not e["active"] or e["ts"] is None:
            continue
        b = bins[min(ALARM_BINS - 1, int((e["ts"] - t0) / width))]
        b["count"] += 1
        b["codes"][e["code"]] = b["codes"].get(e["code"], 0) + 1
    return bins


def model_counts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batteries per SohModel version of their newest estimate, most used first (``None``: no model: the physics
    fit or no estimate yet); the names of up to :data:`BIN_NAMES` batteries each."""
    by: dict[str | None, list[str]] = {}
    for r in rows:
        v = r.get("model_version")
        by.setdefault(str(v) if v else None, []).append(str(r["thing"]))
    ordered = sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0] is None, kv[0] or ""))
    return [{"model_version": v, "count": len(t), "things": sorted(t)[:BIN_NAMES]} for v, t in ordered]


def overview(
    summaries: list[dict[str, Any]],
    details: list[dict[str, Any] | None],
    records: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    max_bytes: int = MAX_OVERVIEW_BYTES,
) -> dict[str, Any]:
    """The fleet view from ``/devices`` (summaries), ``/devices/{thing}`` (details) and each thing's cycle and
    alarm records (oldest first), in the same order."""
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for summary, detail, (cycles, alarms) in zip(summaries, details, records, strict=True):
        thing = str(summary.get("thing"))
        health = (detail or {}).get("health") or {}
        row: dict[str, Any] = {
            "thing": thing,
            "simulated": summary.get("simulated"),
            "soh": _num(summary.get("soh")),
            "rul_cycles": _num(summary.get("rul_cycles")),
            "rul_p10": _num(health.get("rul_cycles_p10")),
            "rul_p90": _num(health.get("rul_cycles_p90")),
            "cycle_index": summary.get("cycle_index"),
            "eol_threshold": _num(health.get("eol_threshold")),
            "method": summary.get("health_method"),
            # the SohModel version behind the newest estimate (None: the physics fit, or no estimate yet)
            "model_version": health.get("model_version"),
            "open_alarms": len(summary.get("open_alarms") or []),
        }
        rows.append(row)
        curve = fade_curve(cycles, _num(health.get("initial_capacity_ah")))
        if curve:
            curves.append({"thing": thing, "simulated": summary.get("simulated"), "points": curve})
        for a in alarms:
            events.append(
                {
                    "ts": _num(a.get("ts")),
                    "thing": thing,
                    "code": str(a.get("code")),
                    "severity": a.get("severity"),
                    "active": bool(a.get("active")),
                }
            )
    events.sort(key=lambda e: (e["ts"] or 0.0, e["thing"]))
    ranked = sorted(
        (r for r in rows if r["rul_cycles"] is not None),
        key=lambda r: (r["rul_cycles"], r["soh"] if r["soh"] is not None else 2.0, r["thing"]),
    )
    thresholds = {r["eol_threshold"] for r in rows if r["eol_threshold"] is not None}
    base: dict[str, Any] = {
        "generated_at": time.time(),
        "batteries": len(rows),
        "soh_histogram": {
            "bin_width": SOH_BIN,
            "bins": soh_histogram([(r["thing"], r["soh"]) for r in rows if r["soh"] is not None]),
            "without_soh": sorted(r["thing"] for r in rows if r["soh"] is None)[:BIN_NAMES],
            "without_soh_count": sum(r["soh"] is None for r in rows),
        },
        "models": model_counts(rows),
        "at_risk": ranked[:AT_RISK_ROWS],
        "at_risk_total": len(ranked),
        "without_rul": len(rows) - len(ranked),
        "eol_threshold": min(thresholds) if len(thresholds) == 1 else None,
        "alarms": {"bins": alarm_bins(events), "raised": sum(e["active"] for e in events)},
    }
    n_points, n_alarms = CURVE_POINTS, OVERVIEW_ALARMS
    while True:
        out = {
            **base,
            "curves": [
                {"thing": c["thing"], "simulated": c["simulated"], **_columns(_thin(c["points"], n_points))}
                for c in curves
            ],
            "alarms": {**base["alarms"], "events": events[-n_alarms:] if n_alarms else []},
            "limits": {
                "curve_points": n_points,
                "alarm_events": n_alarms,
                "max_bytes": max_bytes,
                "thinned": n_points < CURVE_POINTS or n_alarms < OVERVIEW_ALARMS,
            },
        }
        size = len(json.dumps(out, separators=(",", ":"), allow_nan=False))
        if size <= max_bytes or (n_points == 0 and n_alarms == 0):
            out["limits"]["bytes"] = size
            return out
        n_points = n_points // 2 if n_points > 2 else 0
        n_alarms //= 2


def _columns(points: list[tuple[float, float]]) -> dict[str, list[float]]:
    return {"cycle": [p[0] for p in points], "soh": [round(p[1], 5) for p in points]}
