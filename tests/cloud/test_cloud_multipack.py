"""The cloud ingest stores the messages of a multi-pack agent's packs (issue #17 item 1): each pack is its own
thing (``<core>.<id>``) for the rules, the lake and the device state, sent over the core's one connection."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from cloud.api.views import with_live
from cloud.aws import unmarshal
from cloud.ingest.handler import handler
from cloud.live_window import newest_live_item
from device_agent.config import AgentConfig
from device_agent.packs import MultiPackAgent
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.messages import Envelope
from schema.simulator_settings import SimulatorSettings
from tests.cloud.cloud_support import deliver_to_lake, lake_transform, routes_to_ingest, rule_event


def test_the_packs_of_one_core_are_stored_as_their_own_things(
    aws: dict[str, Any], use_env: Any, lambda_env: dict[str, dict[str, str]], tmp_path: Path
):
    env = use_env("ingest")
    core = "mp-core-7"
    config = AgentConfig(
        thing_name=core,
        source={"url": "simulator", "sample_interval_s": 10.0},
        telemetry={"batch_max_samples": 30, "batch_max_age_s": 3600.0},
        spool={"path": tmp_path / "spool.db"},
        shadow={"enabled": False},
        health={"use_shipped_model": False},
        packs=[{"id": "a", "url": "simulator"}, {"id": "b", "url": "simulator"}],
    )
    sources = {
        pid: SimulatorSource(SimulatorSettings(seed=seed, time_acceleration=1e6), interval_s=10.0, name=pid)
        for pid, seed in (("a", 1), ("b", 2))
    }
    transport = MemoryTransport()
    runner = MultiPackAgent(config, transport, sources)  # type: ignore[arg-type]
    runner.run(threading.Event(), max_samples=300)
    runner.close()
    assert transport.published
    outcomes = []
    for topic, payload in transport.published:  # as the template routes them: the ingest Lambda or the lake
        if routes_to_ingest(topic):
            event = {**rule_event(topic, payload), "rule_client_id": core}  # one connection: the core's client id
            outcomes.append(handler(event))
    assert all(o["status"] == "stored" for o in outcomes)
    deliver_to_lake(
        aws["s3"], env["DATA_BUCKET"], transport.published, transform=lake_transform(aws, lambda_env["lake_expand"])
    )
    things = {Envelope.model_validate_json(p).thing for _t, p in transport.published}
    assert things == {f"{core}.a", f"{core}.b"}
    for thing in things:
        item = aws["dynamodb"].get_item(TableName=env["DEVICE_STATE_TABLE"], Key={"thing": {"S": thing}})["Item"]
        state = with_live(unmarshal(item), newest_live_item(aws["dynamodb"], env["HISTORY_TABLE"], thing))
        assert state["latest_sample"]["source_id"] == f"simulator:{thing.rsplit('.', 1)[1]}"
