"""The API Lambda's handler over the tables the ingest filled on moto: routes, filters, pagination, errors,
and the local HTTP server serving the same handler."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from cloud.api.handler import handler
from cloud.api.local_server import LocalApiServer
from schema.messages import Envelope, telemetry_samples


def get(path: str, query: dict[str, Any] | None = None, method: str = "GET", **extra: Any) -> tuple[int, Any]:
    event = {
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {k: str(v) for k, v in (query or {}).items()} or None,
        **extra,
    }
    resp = handler(event)
    assert resp["headers"]["Content-Type"] == "application/json"
    return resp["statusCode"], json.loads(resp["body"])


def pages(path: str, query: dict[str, Any], limit: int) -> list[list[dict[str, Any]]]:
    out = []
    token = None
    for _ in range(1000):
        q = {**query, "limit": limit, **({"next": token} if token else {})}
        status, body = get(path, q)
        assert status == 200, body
        assert len(body["items"]) <= limit
        out.append(body["items"])
        token = body["next"]
        if token is None:
            return out
    raise AssertionError("pagination did not end")


@pytest.fixture
def api_env(use_env: Any, ingested: dict[str, Any]) -> dict[str, str]:
    return dict(use_env("api"))


@pytest.fixture(scope="module")
def envelopes(ingested: dict[str, Any]) -> list[Envelope]:
    return [Envelope.model_validate_json(p) for _t, p in ingested["messages"]]


@pytest.mark.slow
@pytest.mark.every_python  # the API handler runs on the Lambda runtime's python3.13
def test_devices_paginated(aws: dict[str, Any], api_env: dict[str, str]) -> None:
    stored = aws["dynamodb"].scan(TableName=api_env["DEVICE_STATE_TABLE"], Select="COUNT")["Count"]
    assert stored >= 2
    got = pages("/devices", {}, limit=1)
    things = [d["thing"] for page in got for d in page]
    assert len(things) == len(set(things)) == stored
    assert {"bt-a", "bt-b"} <= set(things)
    assert sum(1 for p in got if p) == stored  # one device per page
    status, body = get("/devices", {"limit": 1000})
    assert status == 200 and body["next"] is None and len(body["items"]) == stored


@pytest.mark.slow
@pytest.mark.every_python  # the API handler runs on the Lambda runtime's python3.13
def test_device_detail(api_env: dict[str, str], envelopes: list[Envelope]) -> None:
    status, body = get("/devices/bt-b")
    assert status == 200
    mine = [e for e in envelopes if e.thing == "bt-b"]
    health = max((e for e in mine if e.kind == "health"), key=lambda e: e.ts).body
    assert body["thing"] == "bt-b" and body["soh"] == health["soh"] and body["health"] == health
    assert body["last_seen"] == max(e.ts for e in mine)
    assert body["last_cycle"]["index"] == max(e.body["index"] for e in mine if e.kind == "cycles")
    assert isinstance(body["open_alarms"], list) and isinstance(body["alarms"], list)
    status, body = get("/devices/bt-a")
    a_tel = max((e for e in envelopes if e.thing == "bt-a" and e.kind == "telemetry"), key=lambda e: e.ts)
    assert body["voltage_v"] == telemetry_samples(a_tel.body)[-1]["voltage_v"]
    assert get("/devices/no-such-thing")[0] == 404
    assert get("/devices/bad%20name!")[0] == 400


def test_history_by_kind_and_time_window(api_env: dict[str, str], envelopes: list[Envelope]) -> None:
    tel = sorted((e for e in envelopes if e.thing == "bt-a" and e.kind == "telemetry"), key=lambda e: e.ts)
    lo, hi = tel[10].ts, tel[40].ts
    got = pages("/devices/bt-a/history", {"kind": "telemetry", "from": lo, "to": hi}, limit=7)
    items = [i for p in got for i in p]
    assert [i["id"] for i in items] == [e.id for e in tel[10:41]]
    assert all(i["kind"] == "telemetry" and telemetry_samples(i["body"]) for i in items)
    assert len(got) == 5  # 31 items, 7 per page
    # ISO 8601 bounds and newest first
    iso = {"from": datetime.fromtimestamp(lo, UTC).isoformat(), "to": datetime.fromtimestamp(hi, UTC).isoformat()}
    status, body = get("/devices/bt-a/history", {"kind": "telemetry", "order": "desc", "limit": 1000, **iso})
    assert status == 200 and [i["id"] for i in body["items"]] == [e.id for e in reversed(tel[10:41])]


def test_history_of_every_kind_in_time_order(api_env: dict[str, str], envelopes: list[Envelope]) -> None:
    mine = sorted((e for e in envelopes if e.thing == "bt-b"), key=lambda e: (round(e.ts * 1000), e.id))
    items = [i for p in pages("/devices/bt-b/history", {}, limit=9) for i in p]
    assert [i["id"] for i in items] == [e.id for e in mine]
    assert {i["kind"] for i in items} == {e.kind for e in mine}


def test_cycles(api_env: dict[str, str], envelopes: list[Envelope]) -> None:
    cycles = sorted((e for e in envelopes if e.thing == "bt-b" and e.kind == "cycles"), key=lambda e: e.ts)
    items = [i for p in pages("/devices/bt-b/cycles", {}, limit=5) for i in p]
    assert [(i["id"], i["index"], i["kind"]) for i in items] == [
        (e.id, e.body["index"], e.body["kind"]) for e in cycles
    ]
    assert items[0]["capacity_ah"] == cycles[0].body["capacity_ah"]
    status, body = get("/devices/bt-b/cycles", {"order": "desc", "limit": 2})
    assert status == 200
    assert [i["id"] for i in body["items"]] == [cycles[-1].id, cycles[-2].id]


def test_bad_requests(api_env: dict[str, str]) -> None:
    _, first = get("/devices/bt-a/history", {"kind": "telemetry", "limit": 2})
    token = first["next"]
    assert token
    status, body = get("/devices/bt-a/history", {"kind": "health", "next": token})
    assert status == 400 and "does not belong" in body["message"]
    assert get("/devices/bt-b/history", {"kind": "telemetry", "next": token})[0] == 400
    assert get("/devices/bt-a/history", {"kind": "telemetry", "next": "garbage!!"})[0] == 400
    status, body = get("/devices/bt-a/history", {"limit": 0})
    assert status == 400 and body["details"][0]["field"] == "limit"
    assert get("/devices/bt-a/history", {"kind": "voltages"})[0] == 400
    assert get("/devices/bt-a/history", {"from": "yesterday"})[0] == 400
    assert get("/devices/bt-a/history", {"from": 100, "to": 50})[0] == 400
    assert get("/devices/bt-a/history", {"colour": "red"})[0] == 400
    status, body = get("/devices", method="POST")
    assert status == 405
    assert get("/nothing/here")[0] == 404


def test_api_gateway_event_shape(api_env: dict[str, str], envelopes: list[Envelope]) -> None:
    """API Gateway passes the matched resource and path parameters (the path may carry a base path)."""
    resp = handler(
        {
            "resource": "/devices/{thing}/cycles",
            "path": "/battwin/devices/bt-b/cycles",
            "httpMethod": "GET",
            "pathParameters": {"thing": "bt-b"},
            "queryStringParameters": {"limit": "1"},
            "requestContext": {"stage": "v1"},
            "headers": {},
            "body": None,
            "isBase64Encoded": False,
        }
    )
    assert resp["statusCode"] == 200
    first = min((e for e in envelopes if e.thing == "bt-b" and e.kind == "cycles"), key=lambda e: e.ts)
    assert json.loads(resp["body"])["items"][0]["id"] == first.id


def test_local_server_serves_the_same_handler(api_env: dict[str, str]) -> None:
    server = LocalApiServer("127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"{server.url}/devices/bt-b/cycles?limit=3", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
            over_http = json.loads(r.read())
        assert over_http == get("/devices/bt-b/cycles", {"limit": 3})[1]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/devices/no-such-thing", timeout=10)
        assert err.value.code == 404 and json.loads(err.value.read())["error"] == "not_found"
    finally:
        server.stop()
