"""The dashboard server without a browser: its JSON against the API's, request checks, the view computations,
and both shadow-control implementations (MQTT in the stack; the IoT data plane on moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cloud.api.handler import Api
from cloud.api.local_server import LocalApiServer
from cloud.dashboard.api_client import HttpApi, InProcessApi, get_json
from cloud.dashboard.server import Dashboard, DashboardServer
from cloud.dashboard.shadow_control import IotDataShadowControl, shadow_view
from cloud.dashboard.views import (
    alarm_events,
    eol_band,
    find_anomalies,
    rul_range,
    shown_forecast,
    temperature_bins,
)
from cloud.local_stack.aws_local import LocalAws
from tests.dashboard.conftest import BMS_THING, REPLAY_THING, SIM_THING, fetch, wait_for

# -- against the running stack ------------------------------------------------------------------------


def test_fleet_endpoint_matches_the_api(dashboard_url: str, stack: Any) -> None:
    status, info = fetch(dashboard_url + "api/info")
    assert status == 200 and "moto" in info["api"] and "MQTT" in info["shadow"]

    # the fleet is live: compare a read of the API taken between two identical reads of the fleet endpoint (an
    # alarm stored between two reads need not move last_seen: telemetry, stored by the lake transform, may be newer)
    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status, before = fetch(dashboard_url + "api/fleet")
        assert status == 200
        status, devices = fetch(dashboard_url + "api/v1/devices")  # the API itself, passed through
        assert status == 200
        status, after = fetch(dashboard_url + "api/fleet")
        assert status == 200
        alarms = [[a["code"] for a in r["open_alarms"]] for r in after["items"]]
        same = alarms == [[a["code"] for a in r["open_alarms"]] for r in before["items"]]
        return (after, devices) if same else None

    fleet, devices = wait_for(settled, 60, 0.5, "a fleet read unchanged around an API read")
    assert [r["thing"] for r in fleet["items"]] == [d["thing"] for d in devices["items"]]
    rows = {r["thing"]: r for r in fleet["items"]}
    assert rows[SIM_THING]["simulated"] is True and rows[SIM_THING]["source"] == f"simulator:{SIM_THING}"
    assert rows[BMS_THING]["simulated"] is True and rows[BMS_THING]["source"].startswith("jbd:")
    assert rows[REPLAY_THING]["simulated"] is False and rows[REPLAY_THING]["source"] == "replay:B0036"
    for d in devices["items"]:
        row = rows[d["thing"]]
        assert {a["code"] for a in row["open_alarms"]} == set(d["open_alarms"]) or row["last_seen"] != d["last_seen"]

    # the thing view's records are the API's records; its live chart fills once the live telemetry is ingested
    # (the fixture waits for health estimates, which the backfilled past brings before any live telemetry)
    def live_view() -> dict[str, Any] | None:
        status, view = fetch(f"{dashboard_url}api/things/{SIM_THING}")
        assert status == 200
        return view if len(view["live"]["ts"]) >= 20 else None

    view = wait_for(live_view, 120, 1.0, f"20 live samples of {SIM_THING}")
    status, cycles = fetch(f"{dashboard_url}api/v1/devices/{SIM_THING}/cycles?limit=1000")
    measured = [c for c in cycles["items"] if c["kind"] == "discharge" and c.get("complete") and c.get("capacity_ah")]
    n = len(view["capacity"]["cycle"])
    assert n >= 1 and [c["index"] for c in measured][:n] == view["capacity"]["cycle"]
    assert [c["capacity_ah"] for c in measured][:n] == view["capacity"]["capacity_ah"]
    assert view["fade"]["c0_ah"] > 0 and view["live"]["ts"] == sorted(view["live"]["ts"])


def test_unknown_things_and_routes(dashboard_url: str) -> None:
    assert fetch(dashboard_url + "api/things/nope-404")[0] == 404
    assert fetch(dashboard_url + "api/things/bad%20name")[0] == 400
    assert fetch(dashboard_url + "api/nothing")[0] == 404
    assert fetch(dashboard_url + "static/../server.py")[0] == 404
    assert fetch(dashboard_url + "static/app.js")[0] == 200
    status, html = fetch(dashboard_url)
    assert status == 200 and "/static/app.js" in html


def test_shadow_post_is_checked(dashboard_url: str) -> None:
    url = f"{dashboard_url}api/things/{SIM_THING}/shadow"
    desired = {"desired": {"health": {"eol_threshold": 0.75}}}
    assert fetch(url, "POST", desired, {"Content-Type": "text/plain"})[0] == 415
    assert fetch(url, "POST", desired, {"Content-Type": "application/json", "Origin": "http://evil.example"})[0] == 403
    assert fetch(url, "POST", {"nope": 1}, {"Content-Type": "application/json"})[0] == 400
    assert fetch(url, "POST", b"{not json", {"Content-Type": "application/json"})[0] == 400
    assert fetch(url, "POST", {"desired": {"x": "y" * 20_000}}, {"Content-Type": "application/json"})[0] == 413
    # a real edit, then the device's answer; and back
    status, view = fetch(url, "POST", desired, {"Content-Type": "application/json"})
    assert status == 200 and view["desired"]["health"]["eol_threshold"] == 0.75

    def reported() -> Any:
        return fetch(url)[1]["reported"].get("health", {}).get("eol_threshold")

    wait_for(lambda: reported() == 0.75, 30, 0.3, "the EOL threshold reported back")
    status, view = fetch(
        url, "POST", {"desired": {"health": {"eol_threshold": 0.8}}}, {"Content-Type": "application/json"}
    )
    assert status == 200
    wait_for(lambda: reported() == 0.8, 30, 0.3, "the EOL threshold restored")


# -- computations --------------------------------------------------------------------------------------


def test_anomalies_flag_a_capacity_jump_only() -> None:
    points = [(float(k), 2.0 - 0.005 * k) for k in range(30)]
    assert find_anomalies(points, 2.0) == []
    points[15] = (15.0, points[15][1] + 0.1)  # a 5 % regeneration jump
    assert find_anomalies(points, 2.0) == [15]
    assert find_anomalies(points[:5], 2.0) == []  # too few to judge
    steep = [(float(k), 2.0 - 0.1 * (k**0.5)) for k in range(20)]  # a fast early fade is not an anomaly
    assert find_anomalies(steep, 2.0) == []
    points[1] = (1.0, 1.0)  # the first cycles are judged only against neighbours on both sides
    assert find_anomalies(points, 2.0) == [15]


def test_temperature_bins_summarise_mean_and_peak() -> None:
    rows = [{"index": k, "mean_temperature_c": 20.0 + k, "max_temperature_c": 30.0 + k} for k in range(1, 25)]
    bins = temperature_bins(rows)
    assert len(bins) == 12 and all(b["n"] == 2 for b in bins)
    assert bins[0]["first_cycle"] == 1 and bins[0]["last_cycle"] == 2
    assert bins[0]["mean_c"]["min"] == 21.0 and bins[0]["mean_c"]["max"] == 22.0 and bins[0]["mean_c"]["median"] == 21.5
    assert bins[-1]["peak_c"] == 54.0
    assert temperature_bins([{"index": 1, "mean_temperature_c": None}]) == []


def test_forecast_is_cut_at_eol_or_a_readable_horizon() -> None:
    fc = [{"cycle": float(c), "soh": 1.0 - 0.001 * c} for c in range(0, 5000, 100)]
    cut = shown_forecast({"forecast": fc, "eol_threshold": 0.8}, 10.0)  # to the EOL crossing, however far
    assert cut["cycle"][-1] == 200.0 and cut["soh"][-1] <= 0.8 and cut["truncated_at"] == 200.0
    flat = [{"cycle": float(c), "soh": 0.99} for c in range(0, 5000, 100)]
    cut = shown_forecast({"forecast": flat, "eol_threshold": 0.8}, 100.0)
    assert cut["cycle"][-1] == 400.0 and cut["horizon"] == 4900.0
    assert shown_forecast(None, 0.0)["cycle"] == []


def test_forecast_carries_the_interval_of_new_messages_and_none_for_old_ones() -> None:
    fc = [
        {"cycle": float(c), "soh": 1.0 - 0.001 * c, "soh_lo": 0.99 - 0.0012 * c, "soh_hi": 1.0 - 0.0008 * c}
        for c in range(0, 5000, 100)
    ]
    cut = shown_forecast({"forecast": fc, "eol_threshold": 0.8}, 10.0)
    assert cut["soh_lo"] == [p["soh_lo"] for p in fc[:3]] and cut["soh_hi"] == [p["soh_hi"] for p in fc[:3]]
    old = shown_forecast({"forecast": [{"cycle": 1.0, "soh": 0.9}], "eol_threshold": 0.8}, 0.0)
    assert old["soh_lo"] == [None] and old["soh_hi"] == [None]
    assert rul_range({"rul_cycles_p10": 50.0, "rul_cycles_p50": 80.0, "rul_cycles_p90": 130.0}) == {
        "p10": 50.0, "p50": 80.0, "p90": 130.0,
    }  # fmt: skip
    assert rul_range({"rul_cycles_p10": 50.0, "rul_cycles_p50": 80.0})["p90"] is None  # type: ignore[index]
    assert rul_range({"rul_cycles": 80.0}) is None and rul_range(None) is None


def test_eol_band_comes_from_the_hybrid_health_record() -> None:
    band = eol_band({"eol_band_sigmas": 3.0, "scatter_log": 0.02, "level_ah": 1.1})
    assert band is not None and band["sigmas"] == 3.0
    assert band["lowered_by"] == pytest.approx(1 - 2.718281828**-0.06, rel=1e-6)  # 5.8 %
    # physics records (no band), a band of 0, a missing scatter or a malformed record: nothing to explain
    for params in (
        {"k_c": 0.01, "z": 1.0},
        {"eol_band_sigmas": 0.0, "scatter_log": 0.02},
        {"eol_band_sigmas": 3.0},
        {"eol_band_sigmas": "3", "scatter_log": 0.02},
        None,
        [1, 2],
    ):
        assert eol_band(params) is None, params


def test_alarm_records_are_raised_cleared_or_events() -> None:
    recs = [
        {"ts": 1, "code": "over_temperature", "active": True, "severity": "critical"},
        {"ts": 2, "code": "config_rejected", "active": False, "severity": "warning"},
        {"ts": 3, "code": "over_temperature", "active": False, "severity": "info"},
    ]
    assert [e["state"] for e in alarm_events(recs)] == ["raised", "event", "cleared"]


def test_shadow_view_splits_rejected_and_delta() -> None:
    doc = {
        "state": {
            "desired": {"source": {"sample_interval_s": -1}},
            "reported": {"source": {"sample_interval_s": 5}, "rejected": {"source.sample_interval_s": "bad"}},
        },
        "metadata": {"reported": {"source": {"sample_interval_s": {"timestamp": 123}}}},
        "version": 4,
    }
    view = shadow_view(doc)
    assert view["rejected"] == {"source.sample_interval_s": "bad"}
    assert view["reported"] == {"source": {"sample_interval_s": 5}}
    assert view["delta"] == {"source": {"sample_interval_s": -1}}
    assert view["reported_at"] == 123 and view["version"] == 4
    assert shadow_view(None)["exists"] is False


# -- production paths on moto: the API over HTTP, the shadow through the IoT data plane -----------------


@pytest.fixture(scope="module")
def moto_aws() -> Iterator[LocalAws]:
    with LocalAws.running() as aws:
        aws.client("dynamodb").put_item(
            TableName=aws.names.device_state_table,
            Item={
                "thing": {"S": "p1"},
                "last_seen": {"N": "100"},
                "simulated": {"BOOL": False},
                "health": {"M": {"soh": {"N": "0.9"}, "source_id": {"S": "jbd:ttyUSB0"}}},
            },
        )
        yield aws


@pytest.mark.slow
def test_http_api_and_in_process_api_answer_the_same(moto_aws: LocalAws) -> None:
    api = Api(moto_aws.names.device_state_table, moto_aws.names.history_table, dynamodb=moto_aws.client("dynamodb"))
    server = LocalApiServer(port=0, api=api).start()
    try:
        over_http = HttpApi(server.url)
        in_process = InProcessApi(api)
        for path in ("/devices", "/devices/p1", "/devices/p1/history"):
            assert get_json(over_http, path) == get_json(in_process, path)
        assert over_http.request("/devices/none")[0] == 404
        dash = DashboardServer(Dashboard(over_http, None), port=0).start()
        try:
            status, fleet = fetch(dash.url + "api/fleet")
            assert status == 200 and fleet["items"][0]["source"] == "jbd:ttyUSB0"
            assert fetch(dash.url + "api/things/p1/shadow")[0] == 501  # started without shadow control
        finally:
            dash.stop()
    finally:
        server.stop()
    assert HttpApi("http://127.0.0.1:9").request("/devices")[0] == 502  # nothing listens on the discard port


def test_iot_data_shadow_control_on_moto(moto_aws: LocalAws) -> None:
    moto_aws.client("iot").create_thing(thingName="p1")
    control = IotDataShadowControl(client=moto_aws.client("iot-data"))
    assert control.get("p1") is None
    control.update_desired("p1", {"source": {"sample_interval_s": 5}})
    view = shadow_view(control.get("p1"))
    assert view["desired"] == {"source": {"sample_interval_s": 5}}
    assert view["delta"] == {"source": {"sample_interval_s": 5}}
    # the device's report (what ConfigSync sends), then the view the dashboard shows
    moto_aws.client("iot-data").update_thing_shadow(
        thingName="p1",
        shadowName="battwin-config",
        payload=json.dumps({"state": {"reported": {"source": {"sample_interval_s": 5}, "rejected": None}}}).encode(),
    )
    view = shadow_view(control.get("p1"))
    assert view["reported"] == {"source": {"sample_interval_s": 5}} and view["delta"] is None


def test_dashboard_command_signs_api_gateway_urls_only() -> None:
    from cloud.dashboard.cli import default_auth

    assert default_auth("https://abc123.execute-api.eu-west-1.amazonaws.com/v1") == "iam"
    assert default_auth("http://127.0.0.1:8080") == "none"
    api = HttpApi("https://abc123.execute-api.eu-west-1.amazonaws.com/v1", auth="iam")
    assert api.region == "eu-west-1"
    with pytest.raises(ValueError):
        HttpApi("https://example.com/api", auth="iam")  # no region to sign for
    with pytest.raises(ValueError):
        HttpApi("ftp://example.com")
