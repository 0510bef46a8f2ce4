"""Uplink limits without Greengrass: the backoff schedule, the MQTT transport against a broker that is down,
its size limit, telemetry batches sized to a budget, and splitting a spooled oversized batch."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from typing import Any

import pytest

from device_agent.config import MqttSettings
from device_agent.greengrass.ipc_limits import publish_payload_budget
from device_agent.uplink.batcher import TelemetryBatcher
from device_agent.uplink.mqtt_transport import MQTT_MAX_MESSAGE_BYTES, MqttTransport
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.sizing import NotSplittable, part_id, split_telemetry, telemetry_overhead
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport, MessageTooLarge
from hardware.transports.backoff import Backoff
from schema.messages import (
    Alarm,
    CycleRecord,
    ForecastPoint,
    Health,
    Sample,
    Telemetry,
    encode_envelope,
    telemetry_samples,
)
from tests.support import free_port


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- the backoff schedule ----------------------------------------------------------------------------
def test_backoff_jitter_stays_in_the_upper_half_and_doubles_to_the_cap() -> None:
    backoff = Backoff(0.5, 60.0, FakeClock(), jitter=0.5, rng=random.Random(1))
    delays = [backoff.failed() for _ in range(12)]
    ceilings = [min(60.0, 0.5 * 2**k) for k in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays), "jittered, not a fixed sequence"


def test_backoff_restarts_only_after_a_connection_that_stayed_healthy() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, 60.0, clock, healthy_after_s=30.0)
    for expected in (0.5, 1.0, 2.0, 4.0):
        backoff.connected()
        clock.t += 1.0  # up for a second, then closed: not healthy
        assert backoff.failed() == expected
    backoff.connected()
    clock.t += 30.0  # stayed up long enough
    assert backoff.failed() == 0.5


def test_backoff_bounds_attempts_in_a_window() -> None:
    backoff = Backoff(0.5, 60.0, jitter=0.5)
    # shortest waits 0.25, 0.5, 1, 2, 4, 8, 16, 30, 30 ... → attempts at 0, .25, .75, 1.75, 3.75, 7.75, 15.75, 31.75
    assert backoff.max_attempts(60.0) == 8
    assert backoff.max_attempts(0.1) == 1
    with pytest.raises(ValueError, match="unbounded"):
        Backoff(0.5, 60.0, jitter=1.0).max_attempts(10.0)


# -- the MQTT transport against a broker that is down ----------------------------------------------------
def _settings(port: int) -> MqttSettings:
    return MqttSettings(url=f"mqtt://127.0.0.1:{port}", reconnect_min_s=0.2, reconnect_max_s=1.6, connect_timeout_s=2.0)


@pytest.mark.slow
def test_mqtt_connects_to_a_refused_port_a_bounded_number_of_times() -> None:
    transport = MqttTransport(_settings(free_port()), client_id="backoff-refused")
    window_s = 4.0
    started = time.monotonic()
    transport.start()
    try:
        threading.Event().wait(window_s)  # the counting window
    finally:
        transport.stop()
    elapsed = time.monotonic() - started
    bound = transport.backoff.max_attempts(elapsed)
    assert 2 <= transport.connect_attempts <= bound, (transport.connect_attempts, elapsed, bound)
    assert not transport.connected


@pytest.mark.slow
def test_mqtt_against_a_listener_that_hangs_up_counts_attempts_from_outside() -> None:
    """The same, counted by the peer: a TCP listener that accepts and closes every connection at once."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transport = MqttTransport(_settings(server.getsockname()[1]), client_id="backoff-hangup")
    window_s = 4.0
    started = time.monotonic()
    transport.start()
    try:
        threading.Event().wait(window_s)
    finally:
        transport.stop()
        stop.set()
        thread.join(5)
        server.close()
    elapsed = time.monotonic() - started
    bound = transport.backoff.max_attempts(elapsed)
    assert 2 <= accepted[0] <= bound, (accepted[0], elapsed, bound)


def test_mqtt_refuses_a_message_over_the_iot_core_limit_without_sending(mosquitto: Any) -> None:
    transport = MqttTransport(MqttSettings(url=mosquitto.url), client_id="size-limit")
    transport.start()
    try:
        assert transport.wait_connected(10)
        topic = "battwin/size-limit/telemetry"
        budget = transport.max_payload_bytes(topic)
        assert budget == MQTT_MAX_MESSAGE_BYTES - 9 - len(topic)
        transport.publish(topic, b"x" * budget).result(10)
        with pytest.raises(MessageTooLarge):
            transport.publish(topic, b"x" * (budget + 1)).result(10)
        assert transport.connected and transport.interruptions == 0
    finally:
        transport.stop()


# -- telemetry sized to the budget ---------------------------------------------------------------------
def _sample(k: int) -> Sample:
    return Sample(
        ts=1.7e9 + k,
        voltage_v=14.8,
        current_a=-1.0,
        temperatures_c=(25.0,),
        cell_voltages_v=(3.7, 3.7, 3.7, 3.7),
        source_id="s",
    )


def test_the_batcher_closes_a_batch_before_it_outgrows_the_budget() -> None:
    size = len(_sample(0).model_dump_json(exclude_none=True))
    batcher = TelemetryBatcher(max_samples=60, max_age_s=1e9, max_bytes=10 * size + 9)  # room for 10 exactly
    batches = [b for b in (batcher.add(_sample(k)) for k in range(35)) if b is not None]
    assert [len(b.samples) for b in batches] == [10, 10, 10]
    for b in batches:
        assert len(b.samples_json) <= 10 * size + 9 + 2  # the array's brackets
        assert json.loads(b.samples_json) == [json.loads(s.model_dump_json(exclude_none=True)) for s in b.samples]
    rest = batcher.take()
    assert rest is not None and len(rest.samples) == 5
    # the count stays an upper bound
    batcher = TelemetryBatcher(max_samples=4, max_age_s=1e9, max_bytes=10**6)
    assert [b is not None for b in (batcher.add(_sample(k)) for k in range(8))] == [False, False, False, True] * 2


def _telemetry(msg_id: str, n: int) -> bytes:
    samples = tuple(_sample(k) for k in range(n))
    return encode_envelope("t-1", "telemetry", Telemetry(samples=samples), samples[-1].ts, msg_id)


def test_split_keeps_every_sample_in_order_with_deterministic_ids() -> None:
    payload = _telemetry("abc-1", 200)
    budget = 4000
    parts = split_telemetry(payload, budget)
    assert parts == split_telemetry(payload, budget), "the same split every time (idempotent ids)"
    assert [pid for pid, _ in parts] == [part_id("abc-1", k) for k in range(len(parts))]
    assert all(len(p) <= budget for _, p in parts) and len(parts) > 1
    bodies = [json.loads(p) for _, p in parts]
    assert [s for b in bodies for s in telemetry_samples(b["body"])] == telemetry_samples(json.loads(payload)["body"])
    assert len(part_id("x" * 64, 3)) <= 64
    with pytest.raises(NotSplittable):
        split_telemetry(b"not json", budget)
    with pytest.raises(NotSplittable):
        split_telemetry(payload, telemetry_overhead("t-1") + 10)  # one sample alone does not fit


def test_the_publisher_never_blocks_on_an_oversized_row(tmp_path: Any) -> None:
    spool = Spool(tmp_path / "s.db")
    alarm = Alarm(
        ts=2.0,
        code="spool_dropped",
        severity="warning",
        message="x" * 1024,
        details={f"detail_{k}": "x" * 200 for k in range(20)},
        source_id="s-1",
    )
    big_alarm = encode_envelope("t-1", "alarms", alarm, 2.0, "a-1")  # over 5 KB
    spool.put_many(
        [
            ("t-1", "battwin/t-1/telemetry", _telemetry("t-1", 100), 1.0),
            ("a-1", "battwin/t-1/alarms", big_alarm, 2.0),
            ("c-1", "battwin/t-1/cycles", b'{"id":"c-1"}', 3.0),
        ]
    )
    transport = MemoryTransport(max_payload=3000)
    too_large: list[tuple[str, int, int]] = []
    publisher = Publisher(spool, transport, on_too_large=lambda *a: too_large.append(a))
    publisher.start()
    try:
        assert publisher.wait_empty(10)
    finally:
        publisher.stop()
    topics = [t for t, _ in transport.published]
    assert topics[-1] == "battwin/t-1/cycles" and set(topics[:-1]) == {"battwin/t-1/telemetry"}
    assert too_large == [("battwin/t-1/alarms", len(big_alarm), 3000)]
    assert publisher.split == 1 and publisher.dropped_too_large == 1
    spool.close()


def test_cycles_health_and_alarms_are_small_even_at_their_largest() -> None:
    """Only telemetry grows with its batch; the other kinds are bounded by their models: at their largest
    (a 128-character thing and source, a 50-point forecast, a 1,024-character alarm text) they fit the
    smallest budget, IPC's (health, the largest, is about 6.3 KB of 7.2 KB)."""
    thing = "t" * 128
    source = "s" * 128
    long = 1.2345678901234567e-5
    cycle = CycleRecord(
        index=10**9,
        kind="discharge",
        start_ts=1.7e9 + long,
        end_ts=1.8e9 + long,
        duration_s=1e8 + long,
        charge_ah=long,
        energy_wh=long,
        capacity_ah=long,
        complete=True,
        cutoff_voltage_v=2.7 + long,
        start_voltage_v=4.2 + long,
        end_voltage_v=2.7 + long,
        min_voltage_v=2.6 + long,
        max_voltage_v=4.2 + long,
        mean_current_a=-1 - long,
        mean_temperature_c=25 + long,
        max_temperature_c=30 + long,
        resistance_ohm=long,
        n_samples=10**9,
        gaps=10**6,
        source_id=source,
    )
    health = Health(
        ts=1.7e9 + long,
        cycle_index=10**9,
        equivalent_cycles=1e6 + long,
        capacity_ah=1 + long,
        initial_capacity_ah=2 + long,
        soh=0.5 + long,
        eol_threshold=0.8,
        eol_cycle=1e6 + long,
        rul_cycles=1e6 + long,
        rul_cycles_p10=1e5 + long,
        rul_cycles_p50=1e6 + long,
        rul_cycles_p90=2e6 + long,
        forecast=tuple(
            ForecastPoint(cycle=1e6 + k + long, soh=0.5 + long, soh_lo=0.4001, soh_hi=0.6001)  # bounds: 4 decimals
            for k in range(50)
        ),
        method="hybrid",
        model_version="v" * 64,
        fit_params={f"param_{k}": long for k in range(28)},  # the hybrid's: level, band, prior ×6, 2 × 10 horizons
        source_id=source,
    )
    alarm = Alarm(
        ts=1.7e9 + long,
        code="message_too_large",
        severity="critical",
        message="m" * 1024,
        details={f"detail_{k}": "d" * 64 for k in range(8)},
        source_id=source,
    )
    budget = publish_payload_budget(f"battwin/{thing}/telemetry")
    for kind, body in (("cycles", cycle), ("health", health), ("alarms", alarm)):
        size = len(encode_envelope(thing, kind, body, 1.7e9, "i" * 64))
        assert size < budget, (kind, size, budget)
