"""Soak: the real agent process on a simulated battery, thousands of cycles accelerated, against mosquitto.

RSS and open file descriptors must not grow once warmed up. The figures are written to
test-artifacts/soak.json (RELIABILITY.md quotes them). The soak runs until SOAK_CYCLES discharge cycles
(default 300) have arrived at the broker, however long a loaded machine needs for them (SOAK_MAX_SECONDS,
default 900, is only a safety net): its length is counted in cycles, never in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from device_agent.health.model_files import read_model_file
from device_agent.health.shipped import SHIPPED_MODEL_DIR
from tests.support import REPO

SOAK_CYCLES = int(os.environ.get("SOAK_CYCLES", "300"))
SOAK_MAX_SECONDS = float(os.environ.get("SOAK_MAX_SECONDS", "900"))


def _discharges(sub) -> int:
    cycles = [json.loads(p)["body"] for t, p in list(sub.messages) if t.endswith("/cycles")]
    return sum(1 for c in cycles if c["kind"] == "discharge")


@pytest.mark.slow
@pytest.mark.timeout(SOAK_MAX_SECONDS + 180)
def test_soak_rss_and_fds_do_not_grow(tmp_path, mosquitto, subscriber_factory):
    sub = subscriber_factory(mosquitto.url, "battwin/soak-1/+")
    cmd = [
        sys.executable,
        "-m",
        "device_agent.cli",
        "run",
        "--thing",
        "soak-1",
        "--broker",
        mosquitto.url,
        "--spool",
        str(tmp_path / "soak.db"),
        "--sample-interval",
        "10",
        "--cells-series",
        "4",
        "--set",
        "source.simulator.time_acceleration=1000000",
        "--set",
        "source.simulator.ageing_factor=1",
        "--set",
        "telemetry.batch_max_samples=200",
        "--set",
        "telemetry.batch_max_age_s=86400",
        "--set",
        "shadow.enabled=false",
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    series: list[tuple[int, float, int]] = []  # (discharges so far, RSS MB, open fds)
    t0 = time.monotonic()
    try:
        while (done := _discharges(sub)) < SOAK_CYCLES:
            assert time.monotonic() - t0 < SOAK_MAX_SECONDS, f"only {done} discharge cycles in {SOAK_MAX_SECONDS} s"
            time.sleep(1.0)
            assert proc.poll() is None, "the agent died during the soak"
            series.append((done, ps.memory_info().rss / 2**20, ps.num_fds()))
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, "the agent did not stop cleanly on SIGTERM"
    cycles = [json.loads(p)["body"] for t, p in sub.messages if t.endswith("/cycles")]
    discharges = [c for c in cycles if c["kind"] == "discharge"]
    health = [json.loads(p)["body"] for t, p in sub.messages if t.endswith("/health")]
    # the hybrid model needs 3 cleaned capacity points; after that every estimate must be the shipped model's
    after_warmup = [h for h in health if h["cycle_index"] >= discharges[min(10, len(discharges) - 1)]["index"]]
    seconds = time.monotonic() - t0
    warm = [s for s in series if s[0] >= SOAK_CYCLES * 0.3]
    rss_warm, rss_end = warm[0][1], max(s[1] for s in warm[-5:])
    fds = [s[2] for s in warm]
    figures = {
        "seconds": round(seconds, 1),
        "discharge_cycles": len(discharges),
        "messages_received": len(sub.messages),
        "rss_mb_at_30pct": round(rss_warm, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_mb_max": round(max(s[1] for s in series), 1),
        "fds_min": min(fds),
        "fds_max": max(fds),
        "health_messages": len(health),
        "health_methods": sorted({(h["method"], h["model_version"]) for h in after_warmup}),
    }
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(json.dumps(figures, indent=2))
    assert len(discharges) >= SOAK_CYCLES, figures
    # RELIABILITY.md: "the agent process (with the hybrid model)": the predictions are the shipped model's
    shipped_version = read_model_file(SHIPPED_MODEL_DIR / "model.json").version
    assert len(after_warmup) >= SOAK_CYCLES * 0.9, figures
    assert {(h["method"], h["model_version"]) for h in after_warmup} == {("hybrid", shipped_version)}, figures
    assert len(warm) >= 5, f"too few samples after warm-up to judge growth: {figures}"
    assert rss_end - rss_warm < 8.0, f"RSS grows: {figures}"
    assert max(fds) - min(fds) <= 2, f"file descriptors grow: {figures}"
