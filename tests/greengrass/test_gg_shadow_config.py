"""IpcShadowClient and ComponentConfig against the nucleus emulator (ShadowManager, configuration)."""

from __future__ import annotations

import pytest

from device_agent.config import AgentConfig
from device_agent.greengrass.component_config import ComponentConfig, ConfigurationError, agent_overrides
from device_agent.greengrass.connection import IpcConnection
from device_agent.greengrass.ipc_shadow import IpcShadowClient
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.shadow.client import CONFIG_SHADOW, ShadowError
from tests.greengrass.gg_support import AGENT, DELTA_TOPIC, THING, Collector


def test_shadow_round_trip_with_its_own_connection(gg_env):
    shadow = IpcShadowClient(THING)  # connection from the environment, like the agent under Greengrass
    try:
        assert (shadow.thing_name, shadow.shadow_name) == (THING, CONFIG_SHADOW)
        assert shadow.get() is None
        accepted = shadow.update({"state": {"reported": {"source": {"url": "simulator"}}}, "clientToken": "r1"})
        assert accepted["version"] == 1 and accepted["clientToken"] == "r1"
        doc = shadow.get()
        assert doc is not None and doc["state"]["reported"] == {"source": {"url": "simulator"}}
        with pytest.raises(ShadowError) as info:
            shadow.update({"state": {"reported": {"x": 1}}, "version": 5})
        assert info.value.code == 409
        with pytest.raises(ShadowError) as info:
            shadow.update({"state": {"reported": {"blob": "y" * 9000}}})
        assert info.value.code == 413
        with pytest.raises(ShadowError) as info:
            shadow.update({"state": {"other": {}}})
        assert info.value.code == 400
    finally:
        shadow.close()


def test_shadow_outside_the_policy_is_unauthorized(emulator):
    conn = IpcConnection(emulator.socket_path, emulator.svcuid)
    other = IpcShadowClient(THING, "another-shadow", client=conn)
    try:
        with pytest.raises(ShadowError) as info:
            other.get()
        assert info.value.code == 401
        for _ in range(2):  # a refused on_delta registers nothing, and a retry really tries again
            with pytest.raises(ShadowError) as info:
                other.on_delta(lambda state, version: None)  # its delta topic is not allowed either
            assert info.value.code == 401
        assert len(emulator.denials) == 3
    finally:
        other.close()
        conn.stop()


def test_not_connected_is_503(emulator):
    conn = IpcConnection(emulator.socket_path, "bad-token", reconnect_min_s=0.05, reconnect_max_s=0.1)
    shadow = IpcShadowClient(THING, client=conn)
    try:
        with pytest.raises(ShadowError) as info:
            shadow.get(timeout=0.3)
        assert info.value.code == 503
    finally:
        shadow.close()
        conn.stop()


def test_deltas_from_the_cloud_and_after_a_restart(emulator):
    conn = IpcConnection(emulator.socket_path, emulator.svcuid, reconnect_min_s=0.05, reconnect_max_s=0.2)
    shadow = IpcShadowClient(THING, client=conn)
    deltas = Collector()
    try:
        shadow.on_delta(lambda state, version: deltas((state, version)))
        shadow.update({"state": {"reported": {"health": {"eol_threshold": 0.8}}}})
        emulator.update_shadow({"state": {"desired": {"health": {"eol_threshold": 0.7}}}}, CONFIG_SHADOW)
        assert deltas.wait(1)
        assert deltas.items == [({"health": {"eol_threshold": 0.7}}, 2)]
        emulator.restart()
        assert emulator.wait_for_connections(2)
        assert emulator.wait_for_subscriptions("pubsub", DELTA_TOPIC, 1)
        emulator.update_shadow({"state": {"desired": {"telemetry": {"decimation": 2}}}}, CONFIG_SHADOW)
        assert deltas.wait(2)
        assert deltas.items[1] == ({"health": {"eol_threshold": 0.7}, "telemetry": {"decimation": 2}}, 3)
        # the agent reports what it applied: the delta is resolved and no further delta is published
        accepted = shadow.update(
            {"state": {"reported": {"health": {"eol_threshold": 0.7}, "telemetry": {"decimation": 2}}}}
        )
        assert accepted["version"] == 4
        doc = shadow.get()
        assert doc is not None and "delta" not in doc["state"]
    finally:
        shadow.close()
        conn.stop()


def test_one_connection_shared_by_transport_shadow_and_config(emulator):
    transport = IpcTransport(IpcConnection(emulator.socket_path, emulator.svcuid))
    transport.start()
    shadow = IpcShadowClient(THING, client=transport.connection)
    config = ComponentConfig(client=transport.connection)
    try:
        assert transport.wait_connected(10)
        assert shadow.get() is None
        assert config.get()["log_level"] == "INFO"
        transport.publish(f"battwin/{THING}/health", b"{}").result(10)
        assert emulator.connects == 1
    finally:
        config.close()
        shadow.close()
        transport.stop()
        transport.connection.stop()


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
        assert health.get() == {"eol_threshold": 0.8}
        assert model.get() == {"model_version": "1.0.0"}
        seen = Collector()
        health.on_update(lambda conf, path: seen((conf, path)))
        emulator.update_configuration({"log_level": "DEBUG"})  # outside ["health"]: not reported
        emulator.update_configuration({"eol_threshold": 0.7}, key_path=["health"])
        assert seen.wait(1)
        assert seen.items == [({"eol_threshold": 0.7}, ["health", "eol_threshold"])]
        assert emulator.configuration(AGENT)["log_level"] == "DEBUG"
    finally:
        health.close()
        model.close()
        conn.stop()
