"""Figures RELIABILITY.md and docs/greengrass.md publish, asserted at the level they are published.

Each test names the sentence it proves. The behaviour behind the figures (a real client against the emulator, the
broker, the spool) is tested elsewhere (docs/claims.md lists where); here the numbers themselves are pinned, so the
text and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

import inspect
import json
import random
import threading
from pathlib import Path
from typing import Any

from device_agent.agent import DROP_ALARM_EVERY_S, Agent
from device_agent.config import AgentConfig
from device_agent.greengrass.connection import IpcConnection
from device_agent.greengrass.ipc_limits import (
    IPC_MAX_MESSAGE_BYTES,
    LITE_UNACKED_STORE_BYTES,
    LITE_UNACKED_STORE_RECORDS,
    MAX_STORE_HOLD_S,
    PUBLISH_FRAME_OVERHEAD,
    mqtt_publish_packet_bytes,
    publish_payload_budget,
)
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.uplink.mqtt_transport import MQTT_MAX_MESSAGE_BYTES
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from hardware.transports.backoff import Backoff
from schema.messages import telemetry_samples
from schema.simulator_settings import SimulatorSettings

TELEMETRY = "battwin/gg-test-thing/telemetry"


def test_the_ipc_payload_budget_is_the_published_formula_and_figures() -> None:
    """RELIABILITY.md "message size": frame ≤ 10,000 B, budget = 3·⌊(10,000 − 252 − len(topic))/4⌋: 7,287 B on
    battwin/gg-test-thing/telemetry, 7,200 B with a 128-character thing name; direct MQTT 128 KiB."""
    assert IPC_MAX_MESSAGE_BYTES == 10_000 and PUBLISH_FRAME_OVERHEAD == 252
    for topic in (TELEMETRY, "battwin/a/alarms", "battwin/" + "t" * 128 + "/telemetry"):
        assert publish_payload_budget(topic) == 3 * ((10_000 - 252 - len(topic)) // 4)
    assert publish_payload_budget(TELEMETRY) == 7_287
    assert publish_payload_budget("battwin/" + "t" * 128 + "/telemetry") == 7_200
    assert MQTT_MAX_MESSAGE_BYTES == 128 * 1024


def default_telemetry_on_the_ipc_budget(tmp_path: Path, n_samples: int = 3000, **config: Any) -> list[bytes]:
    """The telemetry payloads the agent publishes from ``n_samples`` simulated 1 s samples with the default
    batching, on a transport that refuses anything over the IPC payload budget (``config``: more AgentConfig
    sections, e.g. ``soc``)."""
    settings = SimulatorSettings(seed=3, time_acceleration=1e6, ageing_factor=10.0, start_ts=1.7e9, cells_series=4)
    agent_config = AgentConfig(
        thing_name="gg-test-thing",
        source={"url": "simulator", "sample_interval_s": 1.0, "simulator": settings.model_dump()},
        tracker={"cells_series": 4},
        spool={"path": tmp_path / "spool.db"},
        **config,
    )
    assert agent_config.telemetry.batch_max_samples == 60 and agent_config.telemetry.batch_max_age_s == 60
    transport = MemoryTransport(max_payload=publish_payload_budget(TELEMETRY))
    agent = Agent(agent_config, SimulatorSource(settings, interval_s=1.0), transport, Spool(tmp_path / "spool.db"))
    try:
        agent.run(threading.Event(), max_samples=n_samples)
        agent.shutdown(5)
    finally:
        agent.close()
    return [p for t, p in transport.published if t.endswith("/telemetry")]


def test_default_telemetry_at_1_s_on_the_ipc_budget_is_38_to_39_samples_of_7_to_7_3_kb(tmp_path) -> None:
    """RELIABILITY.md: "with the defaults at 1 s sampling a batch is 38–39 samples, 7.0–7.3 KB on IPC (never over
    the 7,287 B budget)" — plain JSON telemetry (``telemetry.encoding = "json"``)."""
    budget = publish_payload_budget(TELEMETRY)
    batches = [
        (len(telemetry_samples(json.loads(p)["body"])), len(p))
        for p in default_telemetry_on_the_ipc_budget(tmp_path, telemetry={"encoding": "json"})
    ]
    assert sum(n for n, _ in batches) == 3000
    full = batches[:-1]  # the last one is closed by the shutdown
    assert {n for n, _ in full} <= {38, 39}, sorted({n for n, _ in full})
    # the sizes depend on the readings' float digits: 7.0–7.3 KB, never over the budget (7,218 B in the figures' run)
    assert max(size for _, size in batches) <= budget == 7_287
    assert min(size for _, size in full) >= 7_000


def test_default_packed_telemetry_at_1_s_on_the_ipc_budget_is_60_samples_in_one_5_kb_unit(tmp_path) -> None:
    """RELIABILITY.md / cloud/README.md: "packed (the default), a batch is the full 60 samples in 1.2–1.6 KB: one
    5 KB unit of IoT Core's bill"."""
    payloads = default_telemetry_on_the_ipc_budget(tmp_path)
    batches = [(len(telemetry_samples(json.loads(p)["body"])), len(p)) for p in payloads]
    assert all(b'"zsamples":' in p for p in payloads)
    assert sum(n for n, _ in batches) == 3000
    assert {n for n, _ in batches[:-1]} == {60}
    assert min(size for _, size in batches[:-1]) >= 1_200 and max(size for _, size in batches) <= 1_600


def test_the_ipc_reconnect_schedule_is_the_published_one() -> None:
    """RELIABILITY.md "reconnects": Greengrass IPC 0.5 s doubling to 60 s, equal jitter (a random part of at most
    half), restarted only after a connection stayed up 30 s — at most 8 attempts in the first minute, then one
    every 30–60 s."""
    defaults = inspect.signature(IpcConnection.__init__).parameters
    assert defaults["reconnect_min_s"].default == 0.5 and defaults["reconnect_max_s"].default == 60.0
    assert defaults["healthy_after_s"].default == 30.0
    assert defaults["stale_token_refusals"].default == 3 and defaults["stale_token_after_s"].default == 30.0

    class Shortest(random.Random):
        def random(self) -> float:
            return 1.0  # the largest random part: every wait at its shortest (half the ceiling)

    for rng in (Shortest(), random.Random(7)):
        backoff = Backoff(0.5, 60.0, jitter=0.5, healthy_after_s=30.0, rng=rng)
        t, attempts, waits = 0.0, [0.0], []
        while t < 600:
            wait = backoff.failed()
            waits.append(wait)
            t += wait
            attempts.append(t)
        assert sum(1 for a in attempts if a < 60.0) <= 8
        assert all(30.0 <= w <= 60.0 for w in waits[8:])  # then one every 30–60 s
    assert Backoff(0.5, 60.0, jitter=0.5).max_attempts(60.0) == 8


def test_the_documented_defaults_are_the_configs() -> None:
    """README / RELIABILITY.md / docs/greengrass.md defaults: direct MQTT 0.2 s → 30 s; IPC in flight 8 messages,
    14,000 B, a 0.25 s hold (≤ 8 s), ServiceError pause 1 s doubling to 30 s; stale token 3 refusals over 30 s;
    mqtt.inflight 50; the model poll 30 s; the spool's 64 MiB, drop_oldest, synchronous NORMAL; batches of 60
    samples / 60 s; EOL 0.8; spool_dropped at most once a minute."""
    c = AgentConfig(thing_name="t")
    assert (c.mqtt.reconnect_min_s, c.mqtt.reconnect_max_s, c.mqtt.inflight) == (0.2, 30.0, 50)
    assert (c.ipc.inflight_messages, c.ipc.inflight_bytes, c.ipc.store_hold_s) == (8, 14_000, 0.25)
    assert (c.ipc.stale_token_refusals, c.ipc.stale_token_after_s) == (3, 30.0)
    assert MAX_STORE_HOLD_S == 8.0
    transport_defaults = inspect.signature(IpcTransport.__init__).parameters
    assert transport_defaults["service_retry_min_s"].default == 1.0
    assert transport_defaults["service_retry_max_s"].default == 30.0
    assert transport_defaults["max_inflight_messages"].default == c.ipc.inflight_messages
    assert transport_defaults["max_inflight_bytes"].default == c.ipc.inflight_bytes
    assert transport_defaults["store_hold_s"].default == c.ipc.store_hold_s
    assert c.health.model_poll_s == 30.0 and c.health.eol_threshold == 0.8
    assert (c.spool.max_bytes, c.spool.policy, c.spool.synchronous) == (67_108_864, "drop_oldest", "NORMAL")
    assert (c.telemetry.batch_max_samples, c.telemetry.batch_max_age_s) == (60, 60)
    assert DROP_ALARM_EVERY_S == 60.0


def test_the_in_flight_bounds_leave_room_in_lites_store() -> None:
    """RELIABILITY.md "in flight": lite's store is 15,000 B / 10 records; 8 and 14,000 B leave two records and
    1,000 B for the nucleus' own publishers; one 7.3 KB telemetry part plus small messages fit, two do not."""
    assert (LITE_UNACKED_STORE_BYTES, LITE_UNACKED_STORE_RECORDS) == (15_000, 10)
    c = AgentConfig(thing_name="t")
    assert LITE_UNACKED_STORE_RECORDS - c.ipc.inflight_messages == 2
    assert LITE_UNACKED_STORE_BYTES - c.ipc.inflight_bytes == 1_000
    part = mqtt_publish_packet_bytes(TELEMETRY, publish_payload_budget(TELEMETRY))
    small = mqtt_publish_packet_bytes("battwin/gg-test-thing/alarms", 600)
    assert 7_300 <= part <= 7_400
    assert part + 6 * small <= c.ipc.inflight_bytes < 2 * part
