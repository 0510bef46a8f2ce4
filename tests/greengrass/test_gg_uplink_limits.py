"""Never a reconnect storm, never a poison message: the agent's IPC uplink against an emulator that enforces
nucleus lite's 10,000-byte IPC message limit (a bigger frame closes the connection, as ggipcd does)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.greengrass.connection import IpcConnection
from device_agent.greengrass.ipc_limits import IPC_MAX_MESSAGE_BYTES, publish_payload_budget
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.sizing import part_id
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MessageTooLarge
from devkit.nucleus import NucleusEmulator
from hardware.simulator.source import SimulatorSource
from schema.messages import (
    CycleRecord,
    Envelope,
    ForecastPoint,
    Health,
    Sample,
    Telemetry,
    encode_envelope,
    telemetry_samples,
)
from schema.simulator_settings import SimulatorSettings
from tests.greengrass.gg_support import AGENT_RECIPE, THING, broad_recipe

LITE = IPC_MAX_MESSAGE_BYTES  # 10,000
TELEMETRY = f"battwin/{THING}/telemetry"


def _lite(socket_path: str, recipe: Any = AGENT_RECIPE) -> NucleusEmulator:
    return NucleusEmulator(socket_path, THING, recipe, max_ipc_message_bytes=LITE).start()


def _samples(n: int, t0: float = 1.7e9) -> list[Sample]:
    return [
        Sample(
            ts=t0 + k,
            voltage_v=3.7 + k * 1e-4,
            current_a=-1.5,
            temperatures_c=(24.5, 25.1),
            soc_pct=50.0,
            cell_voltages_v=(3.7012, 3.7031, 3.6998, 3.7005),
            source_id="sim-1",
        )
        for k in range(n)
    ]


def _cycle(index: int, end_ts: float) -> CycleRecord:
    return CycleRecord(
        index=index,
        kind="discharge",
        start_ts=end_ts - 3600.0,
        end_ts=end_ts,
        duration_s=3600.0,
        charge_ah=2.0,
        energy_wh=7.4,
        complete=False,
        start_voltage_v=4.1,
        end_voltage_v=3.4,
        min_voltage_v=3.4,
        max_voltage_v=4.1,
        mean_current_a=-2.0,
        n_samples=3600,
        source_id="sim-1",
    )


def _sent_samples(envelopes: list[dict[str, Any]]) -> list[Sample]:
    return [Sample.model_validate(s) for e in envelopes for s in telemetry_samples(e["body"])]


# -- the payload budget, measured with the real client ----------------------------------------------
def test_the_payload_budget_is_exactly_what_fits_the_frame_limit(socket_path, ipc_client_factory):
    emu = _lite(socket_path, broad_recipe())
    conn = IpcConnection(emu.socket_path, emu.svcuid)
    transport = IpcTransport(conn)
    transport.start()
    try:
        assert transport.wait_connected(10)
        budget = transport.max_payload_bytes(TELEMETRY)
        assert budget == publish_payload_budget(TELEMETRY) > 7000
        # the largest payload the budget allows goes through the unmodified client and the 10,000-byte limit
        transport.publish(TELEMETRY, b"x" * budget).result(10)
        assert emu.published[-1].payload == b"x" * budget
        # one byte more is refused before it is sent: the connection stays up
        with pytest.raises(MessageTooLarge) as refused:
            transport.publish(TELEMETRY, b"x" * (budget + 1)).result(10)
        assert (refused.value.size, refused.value.limit) == (budget + 1, budget)
        assert transport.connected and emu.connects == 1 and emu.oversized_frames == 0
        # ... and the budget is tight: sent anyway (by a client without the check), the nucleus hangs up
        raw = ipc_client_factory(emu)
        with pytest.raises(Exception):  # the connection closes; the client's error type varies
            raw.publish_to_iot_core(topic_name=TELEMETRY, qos="1", payload=b"x" * (budget + 1))
        assert emu.oversized_frames == 1
    finally:
        transport.stop()
        emu.stop()


# -- reconnects back off ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_nucleus_that_closes_every_connection_gets_a_bounded_number_of_attempts(socket_path):
    """What happened on real lite: every connection is accepted, then closed because of what the client sends
    at once. A connection that does not stay up must not restart the backoff schedule."""
    emu = _lite(socket_path, broad_recipe())
    conn = IpcConnection(emu.socket_path, emu.svcuid, reconnect_min_s=0.2, reconnect_max_s=1.6)

    def poison(client: Any) -> None:  # an oversized publish on every new connection, bypassing the budget
        client.publish_to_iot_core_async(topic_name=TELEMETRY, qos="1", payload=b"x" * LITE)

    conn.add_connect_callback(poison)
    window_s = 4.0
    started = time.monotonic()
    conn.start()
    try:
        assert emu.wait_for_connections(2, timeout=30), "it must reconnect after the connection is closed"
        threading.Event().wait(max(0.0, window_s - (time.monotonic() - started)))  # the counting window
    finally:
        conn.stop()
    elapsed = time.monotonic() - started
    attempts = emu.connects
    bound = conn.backoff.max_attempts(elapsed)
    assert 2 <= attempts <= bound, f"{attempts} connections in {elapsed:.1f} s; the schedule allows {bound}"
    assert emu.oversized_frames >= attempts - 1
    assert conn.connect_attempts == attempts


@pytest.mark.slow
def test_a_nucleus_that_refuses_every_connect_gets_a_bounded_number_of_attempts(emulator):
    conn = IpcConnection(emulator.socket_path, "not-the-token", reconnect_min_s=0.2, reconnect_max_s=1.6)
    window_s = 4.0
    started = time.monotonic()
    conn.start()
    try:
        threading.Event().wait(window_s)  # the counting window
    finally:
        conn.stop()
    elapsed = time.monotonic() - started
    bound = conn.backoff.max_attempts(elapsed)
    assert 2 <= emulator.refused <= bound, f"{emulator.refused} refused in {elapsed:.1f} s; bound {bound}"
    assert emulator.connects == 0


# -- no message larger than the limit is produced ------------------------------------------------------
@pytest.mark.parametrize("encoding", ["packed", "json"])
def test_the_agent_with_default_telemetry_settings_publishes_everything_under_lite_limits(
    socket_path, tmp_path, monkeypatch, encoding
):
    """The regression test for the storm: default batching (60 samples, 60 s) at 1 s sampling made 11,201-byte
    messages that lite refused. Now every message fits, nothing is lost and the connection never drops."""
    emu = _lite(socket_path)
    for key, value in emu.env().items():
        monkeypatch.setenv(key, value)
    settings = SimulatorSettings(seed=3, time_acceleration=1e6, ageing_factor=10.0, start_ts=1.7e9, cells_series=4)
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "sample_interval_s": 1.0, "simulator": settings.model_dump()},
        tracker={"cells_series": 4},
        spool={"path": tmp_path / "spool.db"},
        telemetry={"encoding": encoding},
    )
    assert config.telemetry.batch_max_samples == 60  # the defaults
    transport = IpcTransport(store_hold_s=0.0)  # far faster than real time; the hold: test_gg_lite_uplink.py
    agent = Agent(config, SimulatorSource(settings, interval_s=1.0), transport)
    try:
        stats = agent.run(threading.Event(), max_samples=3000)
    finally:
        emu.stop()
    assert stats.samples == 3000
    assert agent.spool.pending == 0
    published = emu.published
    envelopes = [Envelope.model_validate_json(m.payload) for m in published]
    telemetry = [
        (len(telemetry_samples(e.body)), len(m.payload))
        for m, e in zip(published, envelopes, strict=True)
        if e.kind == "telemetry"
    ]
    assert sum(n for n, _ in telemetry) == 3000, "every sample arrives"
    budget = publish_payload_budget(TELEMETRY)
    assert max(size for _, size in telemetry) <= budget
    full = [n for n, size in telemetry[:-1]]
    if encoding == "json":
        # batches are closed by size: full ones use most of the budget, and hold fewer than 60 samples
        assert max(full) < 60 and min(size for _, size in telemetry[:-1]) > budget * 0.9
    else:  # packed (the default): the full 60 samples, each batch within one 5 KB unit
        assert set(full) == {60} and max(size for _, size in telemetry) < 5 * 1024
    for kind in ("cycles", "health", "alarms"):  # small by nature: far under the budget
        sizes = [len(m.payload) for m, e in zip(published, envelopes, strict=True) if e.kind == kind]
        assert not sizes or max(sizes) < 2048, (kind, max(sizes))
    assert emu.oversized_frames == 0 and emu.connects == 1, "no connection was closed, no reconnect"
    agent.close()


# -- a message already spooled that is too big -------------------------------------------------------------
def _spool_with_oversized_rows(path: Path) -> tuple[list[Sample], int]:
    """A spool as an older version left it: a small message, a 150-sample telemetry batch (about 25 KB), an
    oversized health message (a 500-point forecast, about 20 KB: not splittable) and a small message after them."""
    spool = Spool(path)
    samples = _samples(150)
    big_health = Health(
        ts=1.7e9,
        cycle_index=100,
        equivalent_cycles=100.0,
        capacity_ah=1.8,
        initial_capacity_ah=2.0,
        soh=0.9,
        eol_threshold=0.8,
        forecast=tuple(ForecastPoint(cycle=100.0 + k, soh=0.9 - k * 1e-4) for k in range(500)),
        method="physics",
        model_version="physics",
        source_id="sim-1",
    )
    batch = Telemetry(samples=tuple(samples))
    rows = [
        ("old-1", f"battwin/{THING}/cycles", encode_envelope(THING, "cycles", _cycle(1, 1.7e9), 1.7e9, "old-1")),
        ("old-2", TELEMETRY, encode_envelope(THING, "telemetry", batch, samples[-1].ts, "old-2")),
        ("old-3", f"battwin/{THING}/health", encode_envelope(THING, "health", big_health, 1.7e9, "old-3")),
        (
            "old-4",
            f"battwin/{THING}/cycles",
            encode_envelope(THING, "cycles", _cycle(2, 1.7e9 + 1), 1.7e9 + 1, "old-4"),
        ),
    ]
    assert len(rows[1][2]) > 2 * LITE and len(rows[2][2]) > LITE
    spool.put_many([(i, t, p, 1.7e9) for i, t, p in rows])
    health_size = len(rows[2][2])
    spool.close()
    return samples, health_size


def test_the_publisher_splits_a_spooled_oversized_batch_and_drops_what_cannot_be_split(socket_path, tmp_path):
    emu = _lite(socket_path, broad_recipe())
    samples, health_size = _spool_with_oversized_rows(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db")
    too_large: list[tuple[str, int, int]] = []
    transport = IpcTransport(IpcConnection(emu.socket_path, emu.svcuid))
    publisher = Publisher(spool, transport, on_too_large=lambda *args: too_large.append(args))
    transport.start()
    publisher.start()
    try:
        assert publisher.wait_empty(30), "the spool drains: nothing is retried forever"
    finally:
        publisher.stop()
        transport.stop()
        emu.stop()
    envelopes = [json.loads(m.payload) for m in emu.published]
    ids = [e["id"] for e in envelopes]
    parts = [e for e in envelopes if e["kind"] == "telemetry"]
    assert len(parts) >= 4
    assert ids == ["old-1", *[part_id("old-2", k) for k in range(len(parts))], "old-4"], "order kept, health dropped"
    assert _sent_samples(parts) == samples, "same samples, same order"
    assert all(p["ts"] == telemetry_samples(p["body"])[-1]["ts"] for p in parts)
    assert all(len(m.payload) <= publish_payload_budget(m.topic) for m in emu.published)
    assert too_large == [(f"battwin/{THING}/health", health_size, publish_payload_budget(f"battwin/{THING}/health"))]
    assert emu.connects == 1 and emu.oversized_frames == 0, "no reconnect loop"
    assert spool.pending == 0
    spool.close()


def test_the_agent_raises_message_too_large_and_goes_on(socket_path, tmp_path, monkeypatch):
    emu = _lite(socket_path)
    for key, value in emu.env().items():
        monkeypatch.setenv(key, value)
    samples, health_size = _spool_with_oversized_rows(tmp_path / "spool.db")
    settings = SimulatorSettings(seed=5, time_acceleration=1e6, start_ts=1.8e9)
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "sample_interval_s": 1.0, "simulator": settings.model_dump()},
        spool={"path": tmp_path / "spool.db"},
    )
    agent = Agent(config, SimulatorSource(settings, interval_s=1.0), IpcTransport(store_hold_s=0.0))  # fast: see above
    try:
        agent.run(threading.Event(), max_samples=300)
    finally:
        emu.stop()
    assert agent.spool.pending == 0
    envelopes = [json.loads(m.payload) for m in emu.published]
    old_parts = [e for e in envelopes if e["id"].startswith("old-2.")]
    assert _sent_samples(old_parts) == samples
    assert "old-3" not in {e["id"] for e in envelopes}
    alarms = [e["body"] for e in envelopes if e["kind"] == "alarms" and e["body"]["code"] == "message_too_large"]
    assert len(alarms) == 1
    limit = publish_payload_budget(f"battwin/{THING}/health")
    assert alarms[0]["details"] == {"topic": f"battwin/{THING}/health", "size": health_size, "limit": limit}
    new_samples = sum(len(telemetry_samples(e["body"])) for e in envelopes if e["kind"] == "telemetry") - len(samples)
    assert new_samples == 300, "what followed was not held up"
    assert emu.connects == 1 and emu.oversized_frames == 0
    agent.close()
