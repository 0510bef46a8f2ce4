"""The whole agent against real brokers: simulator → tracker → estimator → spool → awscrt → broker → subscriber."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.mqtt_transport import MqttTransport
from hardware.simulator.source import SimulatorSource
from schema.messages import Envelope, telemetry_samples
from schema.simulator_settings import SimulatorSettings
from tests.conftest import Mosquitto, require_mosquitto


def make_agent(url: str, tmp_path: Path, thing: str = "e2e-1", accel: float = 1e6, **sim: Any) -> tuple[Agent, dict]:
    settings = SimulatorSettings(seed=7, time_acceleration=accel, ageing_factor=10.0, start_ts=1.7e9, **sim)
    config = AgentConfig(
        thing_name=thing,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": settings.model_dump()},
        mqtt={"url": url, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "publish_timeout_s": 5.0},
        tracker={"cells_series": settings.cells_series},
        telemetry={"batch_max_samples": 50, "batch_max_age_s": 3600.0},
        spool={"path": tmp_path / f"{thing}.db"},
    )
    accepted: dict[str, list[str]] = {"telemetry": [], "cycles": [], "health": [], "alarms": []}
    agent = Agent(
        config,
        SimulatorSource(settings, interval_s=10.0),
        MqttTransport(config.mqtt, client_id=thing),
        on_message=lambda kind, body, msg_id: accepted[kind].append(msg_id),
    )
    return agent, accepted


def check_delivery(sub, accepted: dict[str, list[str]], thing: str) -> None:
    envs = [Envelope.model_validate(e) for e in sub.envelopes()]
    for e in envs:
        e.parsed_body()  # every message validates against its schema
    assert all(e.thing == thing and e.simulated for e in envs)
    for kind, ids in accepted.items():
        got = [e.id for e in envs if e.kind == kind]
        first_seen = list(dict.fromkeys(got))  # de-duplicated by id, as the cloud does
        assert first_seen == ids, f"{kind}: {len(first_seen)} unique received vs {len(ids)} accepted, or out of order"


def run_to_completion(agent: Agent, max_samples: int) -> None:
    stop = threading.Event()
    agent.run(stop, max_samples=max_samples)


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
@pytest.mark.slow
def test_simulated_battery_reaches_subscriber(broker, request, tmp_path, subscriber_factory):
    if broker == "mosquitto":
        require_mosquitto()
        url = request.getfixturevalue("mosquitto").url
    else:
        url = request.getfixturevalue("amqtt_broker").url
    sub = subscriber_factory(url)
    agent, accepted = make_agent(url, tmp_path)
    run_to_completion(agent, max_samples=30_000)  # ≈ 83 simulated hours: many cycles
    assert agent.spool.pending == 0, "the agent stopped with unsent messages"
    assert sub.wait_for(lambda envs: len(envs) >= sum(map(len, accepted.values())), timeout=30)
    check_delivery(sub, accepted, "e2e-1")
    assert len(accepted["telemetry"]) == 600
    cycles = [e["body"] for e in sub.envelopes("cycles")]
    assert {c["kind"] for c in cycles} == {"charge", "discharge"}
    assert any(c["complete"] and c["capacity_ah"] for c in cycles if c["kind"] == "discharge")
    health = [e["body"] for e in sub.envelopes("health")]
    assert health and all(h["method"] == "physics" and 0.3 < h["soh"] <= 1.1 for h in health)
    samples = [s for e in sub.envelopes("telemetry") for s in telemetry_samples(e["body"])]
    assert len(samples) == 30_000 and all(s["simulated"] for s in samples)
    ts = [s["ts"] for s in samples]
    assert ts == sorted(ts)


@pytest.mark.slow
def test_broker_outage_loses_nothing(tmp_path, subscriber_factory):
    require_mosquitto()
    broker = Mosquitto(tmp_path, persistent=True)
    broker.start()
    try:
        sub = subscriber_factory(broker.url, persistent_session=True)
        # paced: 10 simulated s per poll at x20000 → 2000 polls/s wall
        agent, accepted = make_agent(broker.url, tmp_path, thing="outage-1", accel=20_000.0)
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop,), kwargs={"max_samples": 16_000})
        worker.start()
        assert sub.wait_for(lambda envs: len(envs) > 20, timeout=30)
        broker.stop()
        time.sleep(3.0)  # agent keeps measuring and spooling while the broker is gone
        spooled_while_down = agent.spool.pending
        broker.start()
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert spooled_while_down > 10, "the outage did not make the agent spool anything"
        assert agent.spool.pending == 0
        total = sum(map(len, accepted.values()))
        assert sub.wait_for(lambda envs: len({e["id"] for e in envs}) >= total, timeout=60)
        check_delivery(sub, accepted, "outage-1")
    finally:
        broker.stop()


@pytest.mark.slow
def test_agent_restart_resumes_from_spool(tmp_path, mosquitto, subscriber_factory):
    """Messages spooled while the broker was unreachable are sent by the next agent process."""
    dead_url = "mqtt://127.0.0.1:1"  # nothing listens there
    agent, accepted = make_agent(dead_url, tmp_path, thing="restart-1")
    agent.run(threading.Event(), max_samples=3_000)
    pending = agent.spool.pending
    assert pending == sum(map(len, accepted.values())) > 0
    sub = subscriber_factory(mosquitto.url)
    agent2, _ = make_agent(mosquitto.url, tmp_path, thing="restart-1")
    assert agent2.spool.pending == pending
    agent2.run(threading.Event(), max_samples=100)
    assert agent2.spool.pending == 0
    ids = [e["id"] for e in sub.envelopes()]
    first_run = [i for kind in accepted for i in accepted[kind]]
    assert set(first_run) <= set(ids)
    # the restored state continues the cycle count and the capacity history instead of starting over
    assert agent2.tracker.cycle >= agent.tracker.cycle > 0
    assert agent2.estimator.points[: len(agent.estimator.points)] == agent.estimator.points
