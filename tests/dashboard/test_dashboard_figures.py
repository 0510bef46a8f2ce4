"""docs/dashboard.md's figures, asserted at the published level: the anomaly rule's thresholds, the demo's
defaults (×2000 time, ×1 ageing, the replay's 200 samples per second, the emulated BMS at ×1000 at most, read
every 10 ms), the 1.5 s page poll, the 480 live samples and the local ingest's ten-year clock allowance (the
deployed one's is one day)."""

from __future__ import annotations

import inspect

import pytest

import devkit.demo
from cloud.dashboard import fleet_view, server, views
from cloud.dashboard.views import find_anomalies
from cloud.ingest import handler
from cloud.local_stack import demo, fleet


def flat(n: int = 30, cap: float = 2.0) -> list[tuple[float, float]]:
    return [(float(k), cap) for k in range(n)]


def test_an_anomaly_is_more_than_4_robust_sd_and_more_than_1_percent_of_c0_from_its_4_neighbours_median() -> None:
    c0 = 2.0
    # no scatter (MAD 0): the floor decides — a deviation of 0.9 % of C0 is not an anomaly, 1.1 % is
    for jump, flagged in ((0.009, []), (0.011, [15])):
        pts = flat()
        pts[15] = (15.0, c0 * (1 + jump))
        assert find_anomalies(pts, c0) == flagged, jump
    # with scatter: 1.4826 × MAD sets the scale, 4 of them the threshold (above the 1 % floor here)
    # alternating ±0.02: every neighbour median is c0, every residual ±0.02, MAD 0.02
    scatter = [(float(k), c0 + (0.02 if k % 2 else -0.02)) for k in range(31)]
    threshold = views.ANOMALY_SIGMAS * 1.4826 * 0.02  # 0.119, above the 1 % floor (0.02)
    for extra, flagged in ((threshold - 0.01, []), (threshold + 0.01, [16])):
        pts = list(scatter)
        pts[16] = (16.0, c0 + extra)  # its residual: extra
        assert find_anomalies(pts, c0) == flagged, extra
    # judged once 4 more discharges have followed: the last four are never flagged yet
    pts = flat(20)
    pts[16] = (16.0, c0 * 1.2)
    assert find_anomalies(pts, c0) == []
    assert views.ANOMALY_SIGMAS == 4.0 and views.ANOMALY_WINDOW == 4


def test_the_documented_demo_and_dashboard_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = demo.StackOptions()
    assert (opts.acceleration, opts.ageing, opts.replay_rate_hz, opts.poll_ms) == (2000.0, 1.0, 200.0, 1500)
    assert opts.dashboard_host == "127.0.0.1"
    run_defaults = inspect.signature(demo.run_full_demo).parameters
    for name, value in (("acceleration", 2000.0), ("ageing", 1.0), ("replay_rate_hz", 200.0), ("bank_packs", 16)):
        assert run_defaults[name].default == value, name
    # the device-only demo (no cloud package) ages at the same pace; the fleet view's bounds
    assert inspect.signature(devkit.demo.run_demo).parameters["ageing"].default == 1.0
    assert fleet_view.MAX_OVERVIEW_BYTES == 5 * 1024 * 1024 and fleet_view.SOH_BIN == 0.02
    assert (fleet_view.CURVE_POINTS, fleet_view.OVERVIEW_ALARMS, fleet_view.ALARM_BINS) == (200, 2000, 24)
    assert server.POLL_MS == 1500 and views.LIVE_SAMPLES == 480 and views.TEMPERATURE_BINS == 12
    # the demo's bank: ×200 time (a tenth of the fleet's), a tenth of a battery's published samples per pack
    assert (fleet.BANK_ACCELERATION_DIVISOR, fleet.BANK_TELEMETRY_THINNING, fleet.BANK_NAME) == (
        10.0,
        10.0,
        "demo-bank",
    )
    # the emulated BMS: read every 10 ms at most, so its pack runs ×1000 at most
    assert fleet.MIN_BMS_POLL_S == 0.01 and fleet.BMS_SIM_SECONDS_PER_POLL / fleet.MIN_BMS_POLL_S == 1000.0
    # time stamps: the local ingest accepts ten years ahead, the deployed handler's default is one day
    assert demo.DEMO_MAX_CLOCK_SKEW_S == 10 * 365.25 * 86_400
    for name in ("HISTORY_TABLE", "DEVICE_STATE_TABLE", "DATA_BUCKET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("MAX_CLOCK_SKEW_S", raising=False)
    assert handler.IngestSettings.from_env().max_clock_skew_s == 86_400.0
