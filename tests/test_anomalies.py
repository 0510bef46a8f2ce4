"""On-device anomaly detectors (device_agent.health.anomalies): each fires on an injected anomaly and stays
quiet on clean data; the false alarms on the NASA PCoE logs are held at the level reported in
docs/anomalies.md; the alarms carry their evidence; bad thresholds are typed configuration errors."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_agent.alarms import ALARMS
from device_agent.config import AgentConfig, AnomalySettings, ConfigError, TrackerSettings, load_config
from device_agent.health.anomalies import NASA_TUNING_CELLS, AnomalyMonitor, CapacityDrop, Finding, _Observation
from device_agent.runtime import replay_offline
from device_agent.tracking.cycle_tracker import CycleTracker
from hardware.errors import SourceExhausted
from hardware.replay import ReplaySource
from schema.messages import Sample
from tests.support import DATA, NASA_LOGS, need_shared_data

DT = 20.0
AMBIENT_C = 25.0


@dataclass(frozen=True)
class Cycle:
    capacity_ah: float = 2.0
    current_a: float = 2.0  # discharge current (magnitude)
    r_ohm: float = 0.05
    heat_c_per_a2: float = 1.5  # steady-state rise per A² (a cell's thermal resistance × R)
    cell_offset_v: float = 0.0  # cell 3's offset from its siblings at rest


def pack_samples(cycles: Sequence[Cycle], cells: int = 1, seed: int = 1) -> Iterator[Sample]:
    """A battery cycled like a lab does: rest, constant-current discharge to the cut-off, rest, charge.
    Open-circuit voltage falls linearly with depth of discharge; the terminal voltage carries I·R; the
    temperature follows a first-order rise to ``heat·I²`` above ambient and relaxes at rest."""
    rnd = random.Random(seed)
    t, temp = 0.0, AMBIENT_C

    def sample(v_cell: float, i: float, offset: float) -> Sample:
        noisy = [v_cell + rnd.gauss(0.0, 0.002) for _ in range(cells)]
        if cells >= 3:
            noisy[2] += offset
        return Sample(
            ts=t,
            voltage_v=sum(noisy),
            current_a=i,
            temperatures_c=(round(temp + rnd.gauss(0.0, 0.05), 2),),
            cell_voltages_v=tuple(noisy) if cells > 1 else None,
            source_id="test",
        )

    for cyc in cycles:
        for _ in range(int(900 / DT)):  # rest, full
            temp += (AMBIENT_C - temp) * DT / 600.0
            t += DT
            yield sample(4.15, 0.0, cyc.cell_offset_v)
        hours = cyc.capacity_ah / cyc.current_a
        steps = int(hours * 3600 / DT)
        for k in range(steps + 3):
            ocv = 4.15 - 0.95 * k / steps if k < steps else 2.7  # the knee at empty
            temp += (AMBIENT_C + cyc.heat_c_per_a2 * cyc.current_a**2 - temp) * DT / 600.0
            t += DT
            yield sample(ocv - cyc.current_a * cyc.r_ohm, -cyc.current_a, 0.0)
        for _ in range(int(900 / DT)):  # rest, empty
            temp += (AMBIENT_C - temp) * DT / 600.0
            t += DT
            yield sample(3.3, 0.0, cyc.cell_offset_v)
        for k in range(int(cyc.capacity_ah * 3600 / DT)):  # charge at 1 A
            t += DT
            yield sample(3.4 + 0.7 * k * DT / (cyc.capacity_ah * 3600), 1.0, 0.0)


def run(
    samples: Iterator[Sample], cells: int = 1, settings: AnomalySettings | None = None, cutoff_v: float = 2.9
) -> list[Finding]:
    tracker = CycleTracker(TrackerSettings(cells_series=cells, cutoff_voltage_per_cell_v=cutoff_v), "test")
    monitor = AnomalyMonitor(settings or AnomalySettings(), tracker.settings.rest_current_a)
    out: list[Finding] = []
    for s in samples:
        out += monitor.on_sample(s)
        for record in tracker.push(s):
            out += monitor.on_record(record)
    for record in tracker.flush():
        out += monitor.on_record(record)
    return out


def raised(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.active and f.code == code]


def fading(n: int, **changes: object) -> list[Cycle]:
    """n cycles of a cell fading 0.2 %/cycle, with a regeneration jump (+4 %) every 7th cycle."""
    return [Cycle(capacity_ah=2.0 * (1 - 0.002 * k) * (1.04 if k % 7 == 6 else 1.0), **changes) for k in range(n)]  # type: ignore[arg-type]


# -- capacity drop --------------------------------------------------------------------------------
def test_capacity_drop_fires_on_a_sudden_drop_with_its_evidence() -> None:
    cycles = fading(16) + [Cycle(capacity_ah=1.5) for _ in range(3)]
    found = raised(run(pack_samples(cycles)), "capacity_drop")
    assert len(found) == 1
    d = found[0].details
    assert d["cycle"] is not None and d["baseline_records"] == 10
    assert isinstance(d["value"], float) and isinstance(d["baseline"], float)
    assert d["value"] == pytest.approx(1.5, abs=0.03)
    assert d["baseline"] == pytest.approx(1.96, abs=0.04)
    assert d["change_fraction"] == pytest.approx(-0.23, abs=0.03)
    assert d["threshold_fraction"] == 0.15


def test_capacity_drop_quiet_on_fade_and_regeneration_jumps() -> None:
    assert run(pack_samples(fading(30))) == []


def test_capacity_drop_single_low_discharge_is_not_confirmed() -> None:
    cycles = [*fading(16), Cycle(capacity_ah=1.5), *fading(5)[1:]]
    assert raised(run(pack_samples(cycles)), "capacity_drop") == []


def test_capacity_drop_does_not_compare_a_harder_block_with_gentle_runs() -> None:
    # a block at twice the current delivers less (and heats more): a different condition, not a drop
    cycles = fading(12) + [Cycle(capacity_ah=1.6, current_a=4.0, heat_c_per_a2=1.5) for _ in range(8)]
    assert raised(run(pack_samples(cycles)), "capacity_drop") == []


# -- resistance jump ------------------------------------------------------------------------------
def test_resistance_jump_fires_with_evidence() -> None:
    cycles = fading(12) + fading(4, r_ohm=0.08)
    found = raised(run(pack_samples(cycles)), "resistance_jump")
    assert len(found) == 1
    d = found[0].details
    assert d["value"] == pytest.approx(0.08, rel=0.15)
    assert d["baseline"] == pytest.approx(0.05, rel=0.15)
    assert d["unit"] == "ohm"


def test_resistance_quiet_on_slow_growth() -> None:
    cycles = [Cycle(capacity_ah=2.0 - 0.004 * k, r_ohm=0.05 * (1 + 0.01 * k)) for k in range(30)]
    assert raised(run(pack_samples(cycles)), "resistance_jump") == []


# -- abnormal heating -----------------------------------------------------------------------------
def test_heating_fires_when_out_of_proportion_to_the_current() -> None:
    cycles = [*fading(10), Cycle(capacity_ah=1.96, heat_c_per_a2=3.5)]
    found = raised(run(pack_samples(cycles)), "abnormal_heating")
    assert len(found) == 1
    d = found[0].details
    assert isinstance(d["rise_c"], float) and isinstance(d["expected_rise_c"], float)
    assert d["rise_c"] > 1.6 * d["expected_rise_c"]
    assert d["rms_current_a"] == pytest.approx(2.0, abs=0.05)


def test_heating_quiet_when_the_rise_follows_the_current() -> None:
    # alternating blocks at 1 A, 2 A and 3 A: the rise scales with I², nothing is abnormal
    cycles = [Cycle(capacity_ah=2.0, current_a=(1.0, 2.0, 3.0)[(k // 6) % 3]) for k in range(36)]
    assert raised(run(pack_samples(cycles)), "abnormal_heating") == []


# -- cell drift -----------------------------------------------------------------------------------
def test_cell_drift_fires_when_one_cell_leaves_its_siblings() -> None:
    cycles = [Cycle(cell_offset_v=0.0) for _ in range(8)] + [Cycle(cell_offset_v=-0.01 * k) for k in range(1, 9)]
    found = raised(run(pack_samples(cycles, cells=4), cells=4), "cell_drift")
    assert len(found) == 1
    d = found[0].details
    assert d["cell"] == 3
    assert isinstance(d["drift_v"], float) and d["drift_v"] < -0.03
    assert d["reference_deviation_v"] == pytest.approx(0.0, abs=0.005)


def test_cell_drift_quiet_on_a_balanced_pack() -> None:
    assert raised(run(pack_samples([Cycle() for _ in range(16)], cells=4), cells=4), "cell_drift") == []


# -- the agent publishes them -------------------------------------------------------------------
def write_log(path: Path, samples: Iterator[Sample]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "voltage_v", "current_a", "temperature_c"])
        for s in samples:
            w.writerow([s.ts, round(s.voltage_v, 4), s.current_a, s.temperatures_c[0]])


def test_agent_publishes_an_anomaly_alarm_with_its_evidence(tmp_path: Path) -> None:
    log = tmp_path / "cell.csv"
    write_log(log, pack_samples(fading(14) + [Cycle(capacity_ah=1.4) for _ in range(3)]))
    config = AgentConfig(tracker=TrackerSettings(cutoff_voltage_per_cell_v=2.9))
    out = tmp_path / "out.jsonl"
    replay_offline(config, log, out)
    alarms = [json.loads(line) for line in out.read_text().splitlines() if '"kind":"alarms"' in line]
    drops = [a for a in alarms if a["code"] == "capacity_drop" and a["active"]]
    assert len(drops) == 1
    assert drops[0]["details"]["value"] == pytest.approx(1.4, abs=0.03)
    assert drops[0]["details"]["baseline"] > 1.9
    assert drops[0]["severity"] == ALARMS["capacity_drop"].severity


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"capacity_drop_fraction": 1.5}, "anomalies.capacity_drop_fraction"),
        ({"heating_factor": 0.8}, "anomalies.heating_factor"),
        ({"drift_v": -0.01}, "anomalies.drift_v"),
        ({"min_baseline_records": 12, "baseline_records": 10}, "min_baseline_records"),
        ({"baseline_records": 80, "history_records": 60}, "history_records"),
    ],
)
def test_bad_thresholds_are_config_errors(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"anomalies": overrides})
    assert field in str(err.value)


def test_disabled_detectors_say_nothing() -> None:
    cycles = fading(16) + [Cycle(capacity_ah=1.5) for _ in range(3)]
    assert run(pack_samples(cycles), settings=AnomalySettings(enabled=False)) == []


# -- NASA PCoE: false alarms ----------------------------------------------------------------------
#: every alarm the detectors raise on the NASA logs with the default thresholds, each looked at in the data
#: (docs/anomalies.md): (cell, code, cycle record index) → what it is
NASA_REPLAY_EVENTS: dict[tuple[str, str, int], str] = {
    ("B0033", "capacity_drop", 140): "real: capacity collapses to 0.2-0.46 Ah for runs 139-147 (NASA: very low runs)",
    ("B0033", "resistance_jump", 141): "real: same runs; NASA's EIS Re rises 0.088 -> 0.146 ohm",
    ("B0036", "abnormal_heating", 22): "real step in the data: after a 3-day pause the cell runs ~8 C hotter at 2 A",
    ("B0049", "capacity_drop", 7): "real: capacity steps 1.37 -> 1.0 Ah after a 2-day pause and stays",
    ("B0050", "capacity_drop", 14): "real: capacity collapses to 0.08-0.57 Ah (NASA: very low runs)",
}
#: held-out per-cycle tables (≥ 30 runs) where an injected 25 % drop is found within three runs (reported)
NASA_INJECTED_FOUND, NASA_INJECTED_TRIED = 13, 16
NASA_CELLS = sorted(p.name.split(".")[0] for p in NASA_LOGS.glob("B*.csv.gz")) if NASA_LOGS.is_dir() else []
HELD_OUT = [c for c in NASA_CELLS if c not in NASA_TUNING_CELLS]


def replay_findings(cell: str) -> list[Finding]:
    source = ReplaySource(NASA_LOGS / f"{cell}.csv.gz")
    source.open()

    def samples() -> Iterator[Sample]:
        while True:
            try:
                yield source.poll()
            except SourceExhausted:
                return

    tracker = CycleTracker(TrackerSettings(), cell)
    monitor = AnomalyMonitor(AnomalySettings(), tracker.settings.rest_current_a)
    out: list[Finding] = []
    for s in samples():
        out += monitor.on_sample(s)
        for record in tracker.push(s):
            out += monitor.on_record(record)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cell", HELD_OUT or ["none"])
def test_nasa_held_out_cells_raise_no_false_alarm(cell: str) -> None:
    need_shared_data()
    found = [(cell, f.code, int(f.details["cycle"] or 0)) for f in replay_findings(cell) if f.active]
    false_alarms = [k for k in found if k not in NASA_REPLAY_EVENTS]
    assert false_alarms == []  # reported: 0 false alarms per held-out cell
    # and the classified real events of this cell are all found (the same run every time)
    assert sorted(found) == sorted(k for k in NASA_REPLAY_EVENTS if k[0] == cell)


def nasa_per_cycle(cell: str) -> list[_Observation]:
    """A NASA cell's per-cycle table as the capacity-drop detector sees it (NASA's capacities, NASA's mean
    discharge current and mean cell temperature); runs without a capacity are left out."""
    out = []
    with (DATA / "cells" / "nasa" / f"{cell}.csv").open() as fh:
        for row in csv.DictReader(fh):
            cap, cur = _num(row["capacity_ah"]), _num(row["discharge_current_mean_a"])
            if cap is not None and cap > 0 and cur is not None:
                cycle = int(row["cycle"])
                out.append(_Observation(cycle, float(cycle), cap, -abs(cur), _num(row["cell_temp_mean_c"])))
    return out


def capacity_alarms(observations: list[_Observation]) -> list[int]:
    det = CapacityDrop(AnomalySettings())
    return [int(f.details["cycle"] or 0) for obs in observations for f in det.observe(obs) if f.active]


def test_nasa_per_cycle_capacities_raise_no_alarm_and_an_injected_drop_is_found() -> None:
    """The capacity-drop detector over the per-cycle NASA CSVs: no alarm on any of the 30 cells (so no false
    alarm; the real steps of B0033, B0049 and B0051 are missed in this view, see docs/anomalies.md). Positive
    control: a 25 % drop injected half-way through each held-out cell with at least 30 runs is found within
    three runs in most of them."""
    need_shared_data()
    cells = sorted(p.stem for p in (DATA / "cells" / "nasa").glob("B*.csv"))
    assert len(cells) == 30
    assert {cell: capacity_alarms(nasa_per_cycle(cell)) for cell in cells} == {cell: [] for cell in cells}
    found, tried = 0, 0
    for cell in cells:
        obs = nasa_per_cycle(cell)
        if cell in NASA_TUNING_CELLS or len(obs) < 30:
            continue
        k = len(obs) // 2
        injected = obs[:k] + [
            _Observation(o.index, o.ts, 0.75 * o.value, o.current_a, o.temperature_c) for o in obs[k:]
        ]
        alarms = capacity_alarms(injected)
        tried += 1
        found += any(obs[k].index <= c <= obs[min(k + 3, len(obs) - 1)].index for c in alarms)
    assert (found, tried) == (NASA_INJECTED_FOUND, NASA_INJECTED_TRIED)


def _num(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -- dashboard timeline -----------------------------------------------------------------------------
def test_dashboard_timeline_marks_anomaly_alarms_with_their_evidence() -> None:
    from typing import get_args

    from cloud.dashboard.views import ANOMALY_ALARM_CODES, alarm_events
    from device_agent.health.anomalies import AnomalyCode

    assert set(get_args(AnomalyCode)) == ANOMALY_ALARM_CODES
    assert set(ALARMS) >= ANOMALY_ALARM_CODES  # every anomaly is an alarm row the device can publish
    evidence = {"cycle": 140, "value": 0.2986, "baseline": 1.3467, "baseline_records": 10}
    events = alarm_events(
        [
            {
                "ts": 10.0,
                "code": "capacity_drop",
                "severity": "warning",
                "active": True,
                "message": "m",
                "details": evidence,
            },
            {"ts": 11.0, "code": "over_temperature", "severity": "critical", "active": True, "message": "hot"},
            {"ts": 12.0, "code": "capacity_drop", "severity": "info", "active": False, "message": "back"},
        ]
    )
    assert [(e["code"], e["state"], e["anomaly"]) for e in events] == [
        ("capacity_drop", "raised", True),
        ("over_temperature", "raised", False),
        ("capacity_drop", "cleared", True),
    ]
    assert events[0]["details"] == evidence
    assert events[1]["details"] == {}


# -- positive controls injected into a real held-out NASA log -------------------------------------------
INJECT_CELL = "B0030"


def nasa_rows(cell: str) -> list[dict[str, str]]:
    with gzip.open(NASA_LOGS / f"{cell}.csv.gz", "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def inject(rows: list[dict[str, str]], kind: str, from_fraction: float = 0.5) -> tuple[list[Sample], float]:
    """The log as samples, with an anomaly in every discharge run from ``from_fraction`` of them on:
    ``capacity`` (the voltage collapses below the cut-off at 70 % of the run), ``resistance`` (+0.06 Ω on the
    loaded voltage) or ``heating`` (+15 °C rising through the run: 1.85 × this cell's usual 17.6 °C at 4 A).
    Returns the samples and the injection time."""
    runs: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
        if row["kind"] == "d" and row["current_a"] and float(row["current_a"]) < -0.05:
            runs.setdefault(row["run"], []).append(k)
    order = list(runs)
    hit = order[int(len(order) * from_fraction) :]
    t_inject = float(rows[runs[hit[0]][0]]["t_s"])
    volts = {k: float(r["voltage_v"]) for k, r in enumerate(rows) if r["voltage_v"]}
    temps = {k: float(r["temperature_c"]) for k, r in enumerate(rows) if r["temperature_c"]}
    for run in hit:
        idx = runs[run]
        t0, t1 = float(rows[idx[0]]["t_s"]), float(rows[idx[-1]]["t_s"])
        for k in range(idx[0], idx[-1] + 1):
            frac = (float(rows[k]["t_s"]) - t0) / max(t1 - t0, 1.0)
            current = float(rows[k]["current_a"] or 0.0)
            if kind == "capacity" and frac >= 0.7 and k in volts:
                volts[k] = 2.0
            elif kind == "resistance" and current < -0.05 and k in volts:
                volts[k] += 0.06 * current
            elif kind == "heating" and k in temps:
                temps[k] += 15.0 * frac
    samples = [
        Sample(
            ts=float(r["t_s"]),
            voltage_v=volts[k],
            current_a=float(r["current_a"]),
            temperatures_c=(temps[k],) if k in temps else (),
            source_id="inject",
        )
        for k, r in enumerate(rows)
        if k in volts and r["current_a"]
    ]
    return samples, t_inject


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "code"),
    [("capacity", "capacity_drop"), ("resistance", "resistance_jump"), ("heating", "abnormal_heating")],
)
def test_an_anomaly_injected_into_a_real_nasa_log_is_found_after_the_injection_only(kind: str, code: str) -> None:
    need_shared_data()
    samples, t_inject = inject(nasa_rows(INJECT_CELL), kind)
    found = [f for f in run(iter(samples), cutoff_v=TrackerSettings().cutoff_voltage_per_cell_v) if f.active]
    assert [f.code for f in found] == [code]  # the clean log raises nothing (held-out test)
    assert found[0].ts >= t_inject
