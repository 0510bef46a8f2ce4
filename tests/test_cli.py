"""The battwin command line as a user runs it (subprocesses, real files)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NASA_LOGS, need_shared_data

BATTWIN = [sys.executable, "-m", "device_agent.cli"]


def run(*args, timeout=300):
    return subprocess.run([*BATTWIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_replay_writes_cycle_and_health_records(tmp_path):
    need_shared_data()
    out = tmp_path / "records.jsonl"
    r = run("replay", NASA_LOGS / "B0055.csv.gz", "--out", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    discharges = [x for x in records if x["kind"] == "discharge"]
    health = [x for x in records if x["kind"] == "health"]
    assert summary["cycles"] == sum(1 for x in records if x["kind"] in ("charge", "discharge"))
    assert len(discharges) == 102 and len(health) == 102
    # the shipped hybrid model is used on every new cycle once there is enough history (physics before)
    methods = [h["method"] for h in health]
    assert methods[-1] == "hybrid" and methods.count("hybrid") >= 95
    assert all(h["model_version"].startswith("hybrid-") for h in health if h["method"] == "hybrid")
    assert all(x["source_id"] == "replay:B0055" and x["simulated"] is False for x in records)
    # --start shifts every time stamp
    out2 = tmp_path / "shifted.jsonl"
    assert run("replay", NASA_LOGS / "B0055.csv.gz", "--out", out2, "--start", 1_000_000).returncode == 0
    first = json.loads(out2.read_text().splitlines()[0])
    assert first["start_ts"] == pytest.approx(records[0]["start_ts"] + 1_000_000)


def write_log(path: Path, rows: list[str], header="t_s,voltage_v,current_a,temperature_c,run,kind,ambient_c"):
    with gzip.open(path, "wt") as fh:
        fh.write(header + "\n" + "\n".join(rows) + "\n")


def test_malformed_log_names_line_and_column_and_keeps_earlier_records(tmp_path):
    rows = [f"{k * 10.0},{4.1 - k * 0.004},-2.0,25,1,d,24" for k in range(400)]
    rows.insert(0, "0.0,4.2,0.0,25,1,d,24")
    rows.append("4010.0,banana,-2.0,25,1,d,24")
    log = tmp_path / "bad.csv.gz"
    write_log(log, rows)
    out = tmp_path / "out.jsonl"
    r = run("replay", log, "--out", out)
    assert r.returncode == 2
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert "bad.csv.gz:403" in summary["error"] and "voltage_v" in summary["error"] and "banana" in summary["error"]
    # the discharge seen before the bad row is closed and written, not thrown away
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["kind"] for x in records if x["kind"] != "alarms"][:1] == ["discharge"]


def test_log_without_required_columns(tmp_path):
    log = tmp_path / "nocols.csv.gz"
    write_log(log, ["0,4.1,25"], header="t_s,volts,temperature_c")
    r = run("replay", log, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2
    assert "voltage_v" in r.stderr and "current_a" in r.stderr


def test_missing_log_file(tmp_path):
    r = run("replay", tmp_path / "nope.csv", "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_nan_in_log_is_an_error_not_data(tmp_path):
    log = tmp_path / "nan.csv"
    log.write_text("t_s,voltage_v,current_a,temperature_c\n0,4.1,0,25\n1,nan,0,25\n")
    r = run("replay", log, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "not finite" in r.stdout


@pytest.mark.slow
def test_demo_ends_by_itself(tmp_path):
    r = run("demo", "--duration", "12", "--batteries", "3", "--workdir", tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SIMULATED" in r.stdout
    last_table = r.stdout.split("-- fleet after")[-1]
    for thing in ("sim-25c-1c", "sim-45c-1c", "sim-25c-2c"):
        assert thing in last_table
