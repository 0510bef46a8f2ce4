"""The fleet view's data (cloud.dashboard.fleet_view.overview): histogram, ranking, curves, alarms, byte bound."""

from __future__ import annotations

import json
from typing import Any

from cloud.dashboard import fleet_view
from cloud.dashboard.fleet_view import overview, soh_histogram


def _thing(name: str, soh: float | None, rul: float | None, n_cycles: int, alarms: int = 0) -> tuple[Any, ...]:
    summary = {"thing": name, "simulated": True, "soh": soh, "rul_cycles": rul, "cycle_index": n_cycles}
    health = {"initial_capacity_ah": 2.0, "eol_threshold": 0.8, "rul_cycles_p10": None if rul is None else rul / 2}
    detail = {"thing": name, "health": health if soh is not None else None}
    cycles = [
        {"kind": "discharge", "index": k, "complete": True, "capacity_ah": 2.0 - 0.001 * k} for k in range(1, n_cycles)
    ]
    cycles.append({"kind": "charge", "index": n_cycles, "complete": True, "capacity_ah": None})
    cycles.append({"kind": "discharge", "index": n_cycles, "complete": False, "capacity_ah": None})
    events = [
        {"ts": 1000.0 * k, "code": "over_temperature", "severity": "warning", "active": k % 2 == 0}
        for k in range(alarms)
    ]
    return summary, detail, (cycles, events)


def _fleet(things: list[tuple[Any, ...]], max_bytes: int = fleet_view.MAX_OVERVIEW_BYTES) -> dict[str, Any]:
    return overview([t[0] for t in things], [t[1] for t in things], [t[2] for t in things], max_bytes)


def test_histogram_counts_every_soh_in_its_two_point_bin() -> None:
    bins = soh_histogram([("a", 0.81), ("b", 0.8), ("c", 0.879), ("d", 0.97), ("e", 0.8199)])
    assert [(round(b["lo"], 2), b["count"]) for b in bins] == [
        (0.80, 3),
        (0.82, 0),
        (0.84, 0),
        (0.86, 1),
        (0.88, 0),
        (0.90, 0),
        (0.92, 0),
        (0.94, 0),
        (0.96, 1),
    ]
    assert bins[0]["things"] == ["a", "b", "e"]
    assert soh_histogram([]) == []


def test_overview_ranks_by_rul_draws_a_curve_per_measured_battery_and_counts_raises() -> None:
    things = [
        _thing("old", 0.82, 40.0, 30, alarms=6),
        _thing("mid", 0.88, 400.0, 20, alarms=3),
        _thing("new", 0.97, 1500.0, 10),
        _thing("blank", None, None, 1),  # no health yet: no curve, no rank
        _thing("tie", 0.84, 40.0, 5),
    ]
    out = _fleet(things)
    assert [r["thing"] for r in out["at_risk"]] == ["old", "tie", "mid", "new"]  # RUL, then SoH on a tie
    assert out["at_risk"][0]["rul_p10"] == 20.0 and out["without_rul"] == 1
    assert out["soh_histogram"]["without_soh"] == ["blank"]
    assert sum(b["count"] for b in out["soh_histogram"]["bins"]) == 4
    assert {c["thing"] for c in out["curves"]} == {"old", "mid", "new", "tie"}
    old = next(c for c in out["curves"] if c["thing"] == "old")
    assert old["cycle"] == [float(k) for k in range(1, 30)]  # complete discharges only
    assert old["soh"][0] == (2.0 - 0.001) / 2.0
    assert out["alarms"]["raised"] == 3 + 2 and sum(b["count"] for b in out["alarms"]["bins"]) == 5
    assert len(out["alarms"]["events"]) == 9
    assert out["eol_threshold"] == 0.8 and out["limits"]["thinned"] is False


def test_overview_stays_under_its_byte_cap_by_thinning() -> None:
    things = [_thing(f"b{k:03d}", 0.8 + k / 1000, 10.0 * k, 400, alarms=50) for k in range(60)]
    full = _fleet(things)
    assert full["limits"]["curve_points"] == fleet_view.CURVE_POINTS
    assert all(len(c["cycle"]) == fleet_view.CURVE_POINTS for c in full["curves"])
    assert all(c["cycle"][-1] == 399.0 for c in full["curves"])  # the newest point is kept
    cap = full["limits"]["bytes"] // 3
    small = _fleet(things, max_bytes=cap)
    assert len(json.dumps(small, separators=(",", ":"))) <= cap + 20  # "bytes" itself added after measuring
    assert small["limits"]["thinned"] is True and small["limits"]["curve_points"] < fleet_view.CURVE_POINTS
    assert len(small["curves"]) == 60 and len(small["at_risk"]) == 60  # every battery still there
    assert sum(b["count"] for b in small["soh_histogram"]["bins"]) == 60
