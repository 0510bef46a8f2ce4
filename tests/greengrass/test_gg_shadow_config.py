"""The configuration shadow over IoT Core's shadow topics through the nucleus (PublishToIoTCore /
SubscribeToIoTCore: no shadow IPC, which nucleus lite lacks), and ComponentConfig, against the emulator."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from awsiot.greengrasscoreipc.model import QOS, UnauthorizedError

from device_agent.config import AgentConfig
from device_agent.greengrass.component_config import ComponentConfig, ConfigurationError, agent_overrides
from device_agent.greengrass.connection import IpcConnection
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.shadow.client import CONFIG_SHADOW, ShadowError
from device_agent.shadow.mqtt_shadow import MqttShadowClient
from devkit.nucleus import FLAVOURS, NucleusEmulator
from tests.greengrass.gg_support import AGENT, SHADOW_PREFIX, THING, Collector, agent_recipe

SHADOW_IPC = {"GetThingShadow", "UpdateThingShadow", "DeleteThingShadow", "ListNamedShadowsForThing"}
FILTERS = (f"{SHADOW_PREFIX}/get/+", f"{SHADOW_PREFIX}/update/+")


@pytest.fixture
def agent_emulator(make_emulator: Callable[..., NucleusEmulator]) -> NucleusEmulator:
    """The emulator serving the Agent's recipe with the agreed accessControl (IoT Core shadow topics)."""
    return make_emulator(agent_recipe())


@pytest.fixture
def ipc_transport(agent_emulator: NucleusEmulator) -> Iterator[IpcTransport]:
    conn = IpcConnection(agent_emulator.socket_path, agent_emulator.svcuid, reconnect_min_s=0.05, reconnect_max_s=0.2)
    transport = IpcTransport(conn, refused_retry_delay_s=0)
    transport.start()
    assert transport.wait_connected(10)
    yield transport
    transport.stop()
    conn.stop()


def no_shadow_ipc(emu: NucleusEmulator) -> bool:
    return not [op for _, op in emu.operations if op in SHADOW_IPC]


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


# -- the client over IPC against the emulator's cloud shadow --------------------------------------
def test_shadow_round_trip_over_iot_core_topics(agent_emulator, ipc_transport):
    shadow = MqttShadowClient(ipc_transport, THING)
    assert (shadow.thing_name, shadow.shadow_name) == (THING, CONFIG_SHADOW)
    assert shadow.get() is None  # get/rejected 404
    accepted = shadow.update({"state": {"reported": {"source": {"url": "simulator"}}}})
    assert accepted["version"] == 1 and accepted["state"] == {"reported": {"source": {"url": "simulator"}}}
    doc = shadow.get()
    assert doc is not None and doc["state"]["reported"] == {"source": {"url": "simulator"}} and doc["version"] == 1
    assert shadow.version == 1
    with pytest.raises(ShadowError) as info:
        shadow.update({"state": {"reported": {"x": 1}}, "version": 5})
    assert (info.value.code, info.value.message) == (409, "Version conflict")
    assert shadow.update({"state": {"reported": {"x": 1}}, "version": 1})["version"] == 2  # the current one
    with pytest.raises(ShadowError) as info:
        shadow.update({"state": {"reported": {"blob": "y" * 9000}}})
    assert info.value.code == 413
    with pytest.raises(ShadowError) as info:
        shadow.update({"state": {"other": {}}})
    assert info.value.code == 400
    # what went through the nucleus: IoT Core publishes and two subscriptions, never shadow IPC
    requests = {m.topic for m in agent_emulator.published}
    assert requests == {f"{SHADOW_PREFIX}/get", f"{SHADOW_PREFIX}/update"}
    assert all(agent_emulator.subscriptions("iot", f) == 1 for f in FILTERS)
    assert no_shadow_ipc(agent_emulator) and agent_emulator.denials == []
    assert ("com.battwin.Agent", "PublishToIoTCore") in agent_emulator.operations


def test_deltas_from_the_cloud_and_after_a_nucleus_restart(agent_emulator, ipc_transport):
    shadow = MqttShadowClient(ipc_transport, THING)
    deltas = Collector()
    shadow.on_delta(lambda state, version: deltas((state, version)))
    shadow.update({"state": {"reported": {"health": {"eol_threshold": 0.8}}}})
    agent_emulator.update_shadow({"state": {"desired": {"health": {"eol_threshold": 0.7}}}}, CONFIG_SHADOW)
    assert deltas.wait(1)
    assert deltas.items == [({"health": {"eol_threshold": 0.7}}, 2)]
    agent_emulator.restart()
    assert agent_emulator.wait_for_connections(2)
    assert all(agent_emulator.wait_for_subscriptions("iot", f, 1) for f in FILTERS)  # made again
    agent_emulator.update_shadow({"state": {"desired": {"telemetry": {"decimation": 2}}}}, CONFIG_SHADOW)
    assert deltas.wait(2)
    assert deltas.items[1] == ({"health": {"eol_threshold": 0.7}, "telemetry": {"decimation": 2}}, 3)
    # the agent reports what it applied: the delta is resolved and no further delta is published
    accepted = shadow.update(
        {"state": {"reported": {"health": {"eol_threshold": 0.7}, "telemetry": {"decimation": 2}}}}
    )
    assert accepted["version"] == 4
    doc = shadow.get()
    assert doc is not None and "delta" not in doc["state"]
    assert len(deltas.items) == 2 and no_shadow_ipc(agent_emulator)


def test_a_delta_older_than_what_was_seen_is_not_applied(agent_emulator, ipc_transport):
    shadow = MqttShadowClient(ipc_transport, THING)
    deltas = Collector()
    shadow.on_delta(lambda state, version: deltas((state, version)))
    agent_emulator.update_shadow({"state": {"desired": {"log_level": "DEBUG"}}}, CONFIG_SHADOW)  # v1
    agent_emulator.update_shadow({"state": {"desired": {"log_level": "WARNING"}}}, CONFIG_SHADOW)  # v2
    assert deltas.wait(2)
    # v1's delta delivered late (MQTT does not promise order): not applied; the client reads the shadow
    # again and hands on the current delta instead
    late = {"state": {"log_level": "DEBUG"}, "version": 1, "timestamp": 1}
    agent_emulator.deliver_from_cloud(f"{SHADOW_PREFIX}/update/delta", json.dumps(late).encode())
    assert deltas.wait(3)
    assert [d for d, _ in deltas.items] == [{"log_level": "DEBUG"}, {"log_level": "WARNING"}, {"log_level": "WARNING"}]
    assert deltas.items[2][1] == 2


def test_a_request_the_nucleus_refuses_fails_at_once(make_emulator):
    recipe = agent_recipe()  # without the shadow's publish permission: the request cannot be sent
    policy = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]["aws.greengrass.ipc.mqttproxy"]
    policy[f"{AGENT}:publish:1"]["resources"] = ["battwin/+/#"]
    emu = make_emulator(recipe)
    conn = IpcConnection(emu.socket_path, emu.svcuid)
    transport = IpcTransport(conn, refused_retry_delay_s=0)
    transport.start()
    try:
        with pytest.raises(ShadowError) as info:
            MqttShadowClient(transport, THING).get(timeout=30)
        assert info.value.code == 503 and "Unauthorized" in info.value.message
        assert [d.resource for d in emu.denials] == [f"{SHADOW_PREFIX}/get"]
    finally:
        transport.stop()
        conn.stop()


# -- the emulator's cloud shadow, seen with the unmodified IPC client ------------------------------
def _messages(got: Collector) -> list[tuple[str, dict[str, Any]]]:
    return [(e.message.topic_name.removeprefix(SHADOW_PREFIX + "/"), json.loads(e.message.payload)) for e in got.items]


def test_cloud_shadow_answers_like_iot_core(agent_emulator, ipc_client_factory):
    client = ipc_client_factory(agent_emulator)
    got = Collector()
    for f in FILTERS:
        client.subscribe_to_iot_core(topic_name=f, qos=QOS.AT_LEAST_ONCE, on_stream_event=got)

    def request(op: str, body: dict[str, Any], answers: int) -> list[tuple[str, dict[str, Any]]]:
        seen = len(got.items)
        payload = json.dumps(body).encode()
        client.publish_to_iot_core(topic_name=f"{SHADOW_PREFIX}/{op}", qos=QOS.AT_LEAST_ONCE, payload=payload)
        assert got.wait(seen + answers)
        return _messages(got)[seen:]

    [(topic, body)] = request("get", {"clientToken": "t1"}, 1)
    assert topic == "get/rejected"
    assert body["code"] == 404 and body["message"] == "No shadow exists with name: 'battwin-config'"
    assert body["clientToken"] == "t1"
    answers = request("update", {"state": {"desired": {"log_level": "DEBUG"}}, "clientToken": "t2"}, 3)
    assert [t for t, _ in answers] == ["update/accepted", "update/documents", "update/delta"]
    assert all(b["clientToken"] == "t2" for _, b in answers)
    accepted, documents, delta = (b for _, b in answers)
    assert accepted["version"] == 1 and accepted["state"] == {"desired": {"log_level": "DEBUG"}}
    assert documents["previous"] is None and documents["current"]["version"] == 1
    assert delta["state"] == {"log_level": "DEBUG"} and delta["version"] == 1
    [(topic, body)] = request("update", {"state": {"reported": {"log_level": "INFO"}}, "version": 7}, 1)
    assert topic == "update/rejected" and (body["code"], body["message"]) == (409, "Version conflict")
    [(topic, body)] = request("update", "not an object", 1)  # type: ignore[arg-type]
    assert topic == "update/rejected" and body["code"] == 400
    # reported matches desired: accepted and documents, no delta
    answers = request("update", {"state": {"reported": {"log_level": "DEBUG"}}, "version": 1}, 2)
    assert [t for t, _ in answers] == ["update/accepted", "update/documents"]
    [(topic, body)] = request("get", {}, 1)
    assert topic == "get/accepted" and body["version"] == 2 and "delta" not in body["state"]
    assert body["state"] == {"desired": {"log_level": "DEBUG"}, "reported": {"log_level": "DEBUG"}}
    assert agent_emulator.shadow(THING, CONFIG_SHADOW)["version"] == 2
    assert no_shadow_ipc(agent_emulator)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_access_control_allows_exactly_the_battwin_config_shadow_topics(agent_emulator, ipc_client_factory):
    client = ipc_client_factory(agent_emulator)
    # positive control: the agreed topics, for this thing and (the nucleus does not scope by thing: lite 2.6.0
    # cannot; the core's IoT policy does) for another
    other = "$aws/things/other-thing/shadow/name/battwin-config"
    for f in (*FILTERS, f"{other}/get/+"):
        client.subscribe_to_iot_core(topic_name=f, qos=QOS.AT_LEAST_ONCE, on_stream_event=lambda e: None)
    for topic in (f"{SHADOW_PREFIX}/get", f"{SHADOW_PREFIX}/update", f"{other}/update"):
        client.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=b"{}")
    assert agent_emulator.denials == []
    # negative control: another shadow, the classic shadow, delete, other prefixes, broader filters
    refused_publish = [
        f"$aws/things/{THING}/shadow/name/other/update",
        f"$aws/things/{THING}/shadow/get",
        f"{SHADOW_PREFIX}/delete",
        f"{SHADOW_PREFIX}/get/accepted",  # the answers are the cloud's to publish
        f"$aws/things/{THING}/jobs/get",
        "other/topic",
    ]
    refused_subscribe = [
        "#",
        f"{SHADOW_PREFIX}/#",
        f"$aws/things/{THING}/shadow/#",
        f"$aws/things/{THING}/shadow/name/other/update/+",
        f"{SHADOW_PREFIX}/delete/+",
        f"battwin/{THING}/#",  # the agent only publishes its data
    ]
    for topic in refused_publish:
        with pytest.raises(UnauthorizedError):
            client.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=b"{}")
    for topic in refused_subscribe:
        with pytest.raises(UnauthorizedError):
            client.subscribe_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, on_stream_event=lambda e: None)
    assert [d.resource for d in agent_emulator.denials] == refused_publish + refused_subscribe
    assert agent_emulator.cloud_shadow.requests == 3  # the refused requests never reached the shadow service


# -- the agent under the emulator -----------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_agent_gets_its_configuration_from_the_shadow_and_applies_a_delta(agent_emulator, monkeypatch, tmp_path):
    from device_agent.runtime import build_agent

    for key, value in agent_emulator.env().items():
        monkeypatch.setenv(key, value)
    # configuration waiting in the shadow before the agent starts (set from the cloud)
    agent_emulator.update_shadow({"state": {"desired": {"telemetry": {"batch_max_samples": 7}}}}, CONFIG_SHADOW)
    sim = {"seed": 3, "time_acceleration": 1e4, "start_ts": 1.7e9}
    config = AgentConfig(
        thing_name=THING,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": sim},
        health={"use_shipped_model": False},
        spool={"path": tmp_path / "spool.db"},
    )
    agent = build_agent(config)
    assert isinstance(agent.transport, IpcTransport)
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    worker.start()
    try:
        got = agent_emulator.wait_for_shadow(
            lambda d: _get(d, "state", "reported", "telemetry", "batch_max_samples") == 7, CONFIG_SHADOW, timeout=30
        )
        assert got, agent_emulator.shadow(THING, CONFIG_SHADOW)
        # a desired change from the cloud: the delta reaches the agent, which applies it and reports it
        agent_emulator.update_shadow({"state": {"desired": {"health": {"eol_threshold": 0.72}}}}, CONFIG_SHADOW)
        applied = agent_emulator.wait_for_shadow(
            lambda d: _get(d, "state", "reported", "health", "eol_threshold") == 0.72, CONFIG_SHADOW, timeout=30
        )
        assert applied, agent_emulator.shadow(THING, CONFIG_SHADOW)
        doc = agent_emulator.shadow(THING, CONFIG_SHADOW)
        assert doc is not None and "delta" not in doc["state"]
        # the report is sent as soon as the delta is judged; the agent's own loop switches to it on its next turn
        deadline = time.monotonic() + 30
        while agent.config.health.eol_threshold != 0.72 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(30)
    assert agent.config.telemetry.batch_max_samples == 7 and agent.config.health.eol_threshold == 0.72
    assert no_shadow_ipc(agent_emulator), agent_emulator.operations
    assert agent_emulator.denials == []
    shadow_topics = {m.topic for m in agent_emulator.published if m.topic.startswith("$aws/")}
    assert shadow_topics == {f"{SHADOW_PREFIX}/get", f"{SHADOW_PREFIX}/update"}


# -- forwarding to a broker: the project's local shadow service answers ---------------------------
def test_forwarding_emulator_uses_the_brokers_shadow_service(mosquitto, make_emulator):
    from device_agent.config import MqttSettings
    from device_agent.uplink.mqtt_transport import MqttTransport
    from devkit.local_shadow import LocalShadowService

    service = LocalShadowService(mosquitto.url).start()
    emu = make_emulator(agent_recipe(), forward_mqtt=mosquitto.url)
    conn = IpcConnection(emu.socket_path, emu.svcuid)
    transport = IpcTransport(conn, refused_retry_delay_s=0)
    transport.start()
    cloud = MqttTransport(MqttSettings(url=mosquitto.url), client_id="gg-test-cloud-app")
    cloud.start()
    try:
        shadow = MqttShadowClient(transport, THING)
        deltas = Collector()
        shadow.on_delta(lambda state, version: deltas((state, version)))
        assert all(emu.forwarding_ready(f) for f in FILTERS)  # the broker took the emulator's subscriptions
        assert shadow.get() is None
        assert shadow.update({"state": {"reported": {"log_level": "INFO"}}})["version"] == 1
        # a cloud app changes desired on the broker's shadow service: the delta reaches the device
        app = MqttShadowClient(cloud, THING)
        assert app.update({"state": {"desired": {"log_level": "DEBUG"}}})["version"] == 2
        assert deltas.wait(1)
        assert deltas.items == [({"log_level": "DEBUG"}, 2)]
        assert service.requests == 3 and emu.cloud_shadow.requests == 0  # get, update, the app's update
        assert emu.shadow(THING, CONFIG_SHADOW) is None  # the emulator's own shadow was not involved
        assert no_shadow_ipc(emu) and emu.denials == []
    finally:
        cloud.stop()
        transport.stop()
        conn.stop()
        service.stop()


def test_component_config_get_and_updates(gg_env):
    config = ComponentConfig()
    try:
        whole = config.get()
        assert "thing_name" not in whole and "accessControl" in whole
        agent = AgentConfig.model_validate(agent_overrides(whole))  # the configuration is AgentConfig-shaped
        assert agent.source.url == "simulator"
        assert config.get(["health", "eol_threshold"]) == {"eol_threshold": 0.8}
        with pytest.raises(ConfigurationError, match="ResourceNotFoundError"):
            config.get(["nope"])

        updates = Collector()
        config.on_update(lambda conf, path: updates((conf, path)))
        gg_env.update_configuration({"health": {"eol_threshold": 0.75}})  # a deployment's merge
        assert updates.wait(1)
        conf, path = updates.items[0]
        assert path == ["health", "eol_threshold"] and conf["health"]["eol_threshold"] == 0.75
    finally:
        config.close()


def test_component_config_of_a_subtree_and_of_another_component(emulator):
    conn = IpcConnection(emulator.socket_path, emulator.svcuid)
    emulator.add_component("com.battwin.SohModel", {"model_version": "1.0.0"})
    health = ComponentConfig(key_path=["health"], client=conn)
    model = ComponentConfig("com.battwin.SohModel", client=conn)
    try:
        assert health.get() == {"eol_threshold": 0.8, "model_poll_s": 30.0}
        assert model.get() == {"model_version": "1.0.0"}
        seen = Collector()
        health.on_update(lambda conf, path: seen((conf, path)))
        emulator.update_configuration({"log_level": "DEBUG"})  # outside ["health"]: not reported
        emulator.update_configuration({"eol_threshold": 0.7}, key_path=["health"])
        assert seen.wait(1)
        assert seen.items == [({"eol_threshold": 0.7, "model_poll_s": 30.0}, ["health", "eol_threshold"])]
        assert emulator.configuration(AGENT)["log_level"] == "DEBUG"
    finally:
        health.close()
        model.close()
        conn.stop()
