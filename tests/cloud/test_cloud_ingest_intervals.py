"""The ingest Lambda stores a Health message's 80 % interval and RUL percentiles, and still takes a Health
message from before them (in-process handler against moto, as in test_cloud_ingest)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud.ingest.handler import handler
from schema.messages import ForecastPoint, Health, encode_envelope
from tests.cloud.cloud_support import rule_event
from tests.cloud.conftest import FLEET_START


def _health(ts: float, *, with_interval: bool) -> Health:
    forecast = tuple(
        ForecastPoint(
            cycle=101.0 + 10 * k,
            soh=0.9 - 0.01 * k,
            soh_lo=(0.9 - 0.01 * k) * (1 - 0.01 * k) if with_interval else None,
            soh_hi=(0.9 - 0.01 * k) * (1 + 0.005 * k) if with_interval else None,
        )
        for k in range(5)
    )
    return Health(
        ts=ts, cycle_index=100, equivalent_cycles=100.0, capacity_ah=1.8, initial_capacity_ah=2.0, soh=0.9,
        eol_threshold=0.8, eol_cycle=200.0, rul_cycles=100.0,
        rul_cycles_p10=60.0 if with_interval else None,
        rul_cycles_p50=100.0 if with_interval else None,
        rul_cycles_p90=170.0 if with_interval else None,
        forecast=forecast, method="physics", model_version="fade-law-1", source_id="simulator:5", simulated=True,
    )  # fmt: skip


def _state(aws: dict[str, Any], env: dict[str, str], thing: str) -> dict[str, Any]:
    from cloud.aws import unmarshal

    item = aws["dynamodb"].get_item(TableName=env["DEVICE_STATE_TABLE"], Key={"thing": {"S": thing}})["Item"]
    return unmarshal(item)


def test_ingest_stores_the_interval_and_takes_old_health_messages(aws: dict[str, Any], use_env: Any) -> None:
    env = use_env("ingest")
    t0 = FLEET_START + 7000.0
    old = json.loads(encode_envelope("bt-iv", "health", _health(t0, with_interval=False), ts=t0))
    for key in ("rul_cycles_p10", "rul_cycles_p50", "rul_cycles_p90"):  # a device from before the intervals
        del old["body"][key]
    for p in old["body"]["forecast"]:
        del p["soh_lo"], p["soh_hi"]
    assert handler(rule_event("battwin/bt-iv/health", json.dumps(old).encode()))["status"] == "stored"
    assert _state(aws, env, "bt-iv")["health"]["rul_cycles"] == pytest.approx(100.0)
    new = _health(t0 + 60, with_interval=True)
    assert (
        handler(rule_event("battwin/bt-iv/health", encode_envelope("bt-iv", "health", new, ts=t0 + 60)))["status"]
        == "stored"
    )
    stored = _state(aws, env, "bt-iv")["health"]
    assert (stored["rul_cycles_p10"], stored["rul_cycles_p50"], stored["rul_cycles_p90"]) == (60.0, 100.0, 170.0)
    assert [p["soh_lo"] for p in stored["forecast"]] == [p.soh_lo for p in new.forecast]
    assert [p["soh_hi"] for p in stored["forecast"]] == [p.soh_hi for p in new.forecast]
    assert Health.model_validate(stored) == new
