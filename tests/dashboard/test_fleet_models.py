"""The fleet view says which SohModel version each battery's newest estimate came from (the loop's visible end)."""

from __future__ import annotations

from typing import Any

from cloud.dashboard.fleet_view import overview


def _thing(name: str, rul: float, model_version: str | None) -> tuple[Any, ...]:
    summary = {"thing": name, "simulated": True, "soh": 0.9, "rul_cycles": rul, "cycle_index": 10}
    health = {"initial_capacity_ah": 2.0, "eol_threshold": 0.8, "model_version": model_version}
    return summary, {"thing": name, "health": health}, ([], [])


def test_each_battery_shows_its_model_version_and_the_fleet_counts_versions() -> None:
    things = [_thing("a", 50.0, "hybrid-1-new"), _thing("b", 20.0, "hybrid-1-old"), _thing("c", 90.0, "hybrid-1-new")]
    things.append(_thing("d", 70.0, None))  # a physics-fit estimate: no model behind it
    out = overview([t[0] for t in things], [t[1] for t in things], [t[2] for t in things])
    assert [(r["thing"], r["model_version"]) for r in out["at_risk"]] == [
        ("b", "hybrid-1-old"),
        ("a", "hybrid-1-new"),
        ("d", None),
        ("c", "hybrid-1-new"),
    ]
    assert out["models"] == [
        {"model_version": "hybrid-1-new", "count": 2, "things": ["a", "c"]},
        {"model_version": "hybrid-1-old", "count": 1, "things": ["b"]},
        {"model_version": None, "count": 1, "things": ["d"]},
    ]
