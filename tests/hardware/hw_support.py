"""Helpers for the hardware tests: corpus loading, rigs (emulator + driver), tolerances."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkit.bms_emulators.feed import PackFeed
from hardware.simulator.state import PackState
from schema.messages import Sample
from schema.simulator_settings import SimulatorSettings
from schema.source_settings import SourceSettings

# shared/ lies beside the repository clone (for developers and for CI); BATTWIN_BMS_FRAMES overrides
CORPUS_DIR = Path(os.environ.get("BATTWIN_BMS_FRAMES", Path(__file__).resolve().parents[3] / "shared" / "bms-frames"))


def require_corpus() -> None:
    """Skip when the corpus is absent on a developer machine; in CI its absence is a failure."""
    if CORPUS_DIR.is_dir():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"frame corpus not found at {CORPUS_DIR}")
    pytest.skip(f"frame corpus not found at {CORPUS_DIR}")


def corpus_records(filename: str, protocol: str) -> list[dict[str, Any]]:
    path = CORPUS_DIR / filename
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["protocol"] == protocol:
                records.append(record)
    return records


def record_id(record: dict[str, Any]) -> str:
    src = record.get("source") or {}
    where = f"{(src.get('path') or 'unknown').split('/')[-1]}:{src.get('line', '')}"
    return f"{record['direction']}-{record.get('register_or_id')}-{where}-{record['hex'][:16]}"


def settings(retries: int = 0) -> SourceSettings:
    return SourceSettings(retries=retries)


def make_feed(seed: int = 7, discharge: bool = True) -> PackFeed:
    """A hand-stepped pack; ``discharge`` moves it into its discharge phase (non-zero current)."""
    feed = PackFeed(SimulatorSettings(seed=seed))
    if discharge:
        feed.advance(700.0)
    return feed


@dataclass(frozen=True)
class Resolution:
    voltage_v: float
    current_a: float
    soc_pct: float
    cell_v: float
    temperature_c: float


def assert_matches(sample: Sample, state: PackState, res: Resolution, cells: bool = True, temps: bool = True) -> None:
    """The Sample reproduces the simulator state within the protocol's resolution (plus rounding)."""
    assert abs(sample.voltage_v - state.voltage_v) <= res.voltage_v, (sample.voltage_v, state.voltage_v)
    assert abs(sample.current_a - state.current_a) <= res.current_a, (sample.current_a, state.current_a)
    assert sample.soc_pct is not None
    assert abs(sample.soc_pct - state.soc_pct) <= res.soc_pct, (sample.soc_pct, state.soc_pct)
    if cells:
        assert sample.cell_voltages_v is not None
        assert len(sample.cell_voltages_v) == len(state.cell_voltages_v)
        for got, want in zip(sample.cell_voltages_v, state.cell_voltages_v, strict=True):
            assert abs(got - want) <= res.cell_v, (got, want)
    if temps:
        assert sample.temperatures_c, "no temperatures"
        for got in sample.temperatures_c:
            assert abs(got - state.temperatures_c[0]) <= res.temperature_c, (got, state.temperatures_c)


def chunks(data: bytes, sizes: Iterator[int]) -> list[bytes]:
    out = []
    i = 0
    for size in sizes:
        if i >= len(data):
            break
        out.append(data[i : i + size])
        i += size
    if i < len(data):
        out.append(data[i:])
    return out
