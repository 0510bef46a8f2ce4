"""The API's JSON views of stored items: a history item, a device's summary row and its detail."""

from __future__ import annotations

import json
import math
from typing import Any

from cloud.live_window import latest_sample


def message_body(item: dict[str, Any]) -> dict[str, Any]:
    """The stored message body (a JSON string in the item) as a dict; {} if it is not one."""
    try:
        body = json.loads(item.get("body") or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def history_item(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.get("id"),
        "kind": item.get("kind"),
        "ts": item.get("ts"),
        "received_at": item.get("received_at"),
        "simulated": item.get("simulated"),
        "body": message_body(item),
    }


def open_alarms(state: dict[str, Any]) -> list[dict[str, Any]]:
    alarms = state.get("alarms") or {}
    found = [a for a in alarms.values() if isinstance(a, dict) and a.get("active")]
    return sorted(found, key=lambda a: (-float(a.get("ts") or 0.0), str(a.get("code"))))


def with_live(state: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """A DeviceState item with what the thing's newest telemetry live-window item (:mod:`cloud.live_window`) tells:
    the latest sample, and the newest message when that batch is newer than what DeviceState last stored
    (telemetry does not update DeviceState)."""
    if live is None:
        return state
    out = {**state, "latest_sample": latest_sample(live)}
    ts = live.get("ts")
    stored = state.get("last_seen")
    if isinstance(ts, int | float) and not (isinstance(stored, int | float) and stored >= ts):
        out.update(
            last_seen=ts,
            last_kind="telemetry",
            last_message_id=live.get("id"),
            updated_at=live.get("received_at"),
            simulated=live.get("simulated", state.get("simulated")),
        )
    return out


def device_summary(state: dict[str, Any]) -> dict[str, Any]:
    health = state.get("health") or {}
    sample = state.get("latest_sample") or {}
    temps = sample.get("temperatures_c") or []
    return {
        "thing": state["thing"],
        "first_seen": state.get("first_seen"),
        "last_seen": state.get("last_seen"),
        "updated_at": state.get("updated_at"),  # cloud receive time (last_seen is the device's clock)
        "source_id": sample.get("source_id") or health.get("source_id"),
        "last_kind": state.get("last_kind"),
        "simulated": state.get("simulated"),
        "soh": health.get("soh"),
        "rul_cycles": health.get("rul_cycles"),
        "capacity_ah": health.get("capacity_ah"),
        "health_method": health.get("method"),
        "cycle_index": health.get("cycle_index"),
        "voltage_v": sample.get("voltage_v"),
        "current_a": sample.get("current_a"),
        "temperature_c": (sum(temps) / len(temps)) if temps and all(math.isfinite(t) for t in temps) else None,
        "soc_pct": sample.get("soc_pct"),
        "soc_est_pct": sample.get("soc_est_pct"),  # battwin's own (device_agent.soc)
        "open_alarms": [a.get("code") for a in open_alarms(state)],
        "connected": state.get("connected"),  # from the IoT lifecycle events (None: none seen yet)
        "silent_since": state.get("silent_since"),  # raised device_silent: last heard from then (cloud.silence)
    }


def device_detail(state: dict[str, Any]) -> dict[str, Any]:
    return {
        **device_summary(state),
        "latest_sample": state.get("latest_sample"),
        "health": state.get("health"),
        "health_ts": state.get("health_ts"),
        "last_cycle": state.get("last_cycle"),
        "alarms": open_alarms(state),
        "all_alarms": sorted((state.get("alarms") or {}).values(), key=lambda a: str(a.get("code"))),
    }
