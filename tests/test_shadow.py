"""Device shadow: the local shadow service (AWS IoT semantics) and live configuration through it."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from device_agent.config import AgentConfig
from device_agent.shadow.config_sync import judge
from devkit.local_shadow import LocalShadowService, ShadowStore
from tests.test_e2e_mqtt import make_agent


def test_store_versions_delta_and_null_delete():
    s = ShadowStore()
    code, r = s.update("t", "cfg", {"state": {"desired": {"a": 1, "b": {"c": 2}}}})
    assert code == 0 and r["version"] == 1 and r["delta"] == {"a": 1, "b": {"c": 2}}
    code, r = s.update("t", "cfg", {"state": {"reported": {"a": 1, "b": {"c": 3}}}})
    assert r["version"] == 2 and r["delta"] == {"b": {"c": 2}}
    code, r = s.update("t", "cfg", {"state": {"desired": {"b": None}}})
    assert r["delta"] is None
    doc = s.get("t", "cfg")
    assert doc["state"] == {"desired": {"a": 1}, "reported": {"a": 1, "b": {"c": 3}}} and doc["version"] == 3
    assert "timestamp" in doc["metadata"]["desired"]["a"]


def test_store_rejections():
    s = ShadowStore()
    assert s.update("t", "n", {"nostate": 1})[0] == 400
    assert s.update("t", "n", {"state": {"wished": {}}})[0] == 400
    assert s.update("t", "n", {"state": {"desired": {"x": "y" * 9000}}})[0] == 413
    deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}
    assert s.update("t", "n", {"state": {"desired": deep}})[0] == 400
    s.update("t", "n", {"state": {"desired": {"x": 1}}})
    assert s.update("t", "n", {"state": {"desired": {"x": 2}}, "version": 7})[0] == 409
    assert s.update("t", "n", {"state": {"desired": {"x": 2}}, "version": 1})[0] == 0
    assert s.get("t", "other") is None and s.delete("t", "other") is None


def test_judge_applies_valid_fields_and_names_refused_ones():
    cfg = AgentConfig()
    new, rejected, changed = judge(
        cfg,
        {
            "source": {"sample_interval_s": 5, "url": "jbd:/dev/ttyUSB0"},
            "health": {"eol_threshold": 1.5},
            "telemetry": {"batch_max_samples": 10},
            "log_level": "DEBUG",
            "bogus": 1,
        },
    )
    assert new.source.sample_interval_s == 5 and new.telemetry.batch_max_samples == 10 and new.log_level == "DEBUG"
    assert new.health.eol_threshold == 0.8 and new.source.url == "simulator"
    assert set(rejected) == {"source.url", "health.eol_threshold", "bogus"}
    assert "less than 1" in rejected["health.eol_threshold"]
    assert sorted(changed) == ["log_level", "source.sample_interval_s", "telemetry.batch_max_samples"]


class ShadowApp:
    """What a cloud app or the dashboard does: raw MQTT on the reserved shadow topics (paho)."""

    def __init__(self, url: str, thing: str, shadow: str = "battwin-config", root: str = "$aws") -> None:
        import paho.mqtt.client as paho

        host, port = url.removeprefix("mqtt://").split(":")
        self.prefix = f"{root}/things/{thing}/shadow/name/{shadow}"
        self.inbox: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"app-{uuid.uuid4().hex[:8]}")
        self.c.on_message = lambda c, u, m: self._got(m.topic, m.payload)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect(host, int(port))
        self.c.subscribe(f"{self.prefix}/#", qos=1)
        self.c.loop_start()
        assert ready.wait(10)

    def _got(self, topic, payload):
        with self.lock:
            self.inbox.append((topic, json.loads(payload)))

    def request(self, op: str, body: dict, timeout: float = 10.0) -> tuple[str, dict]:
        token = uuid.uuid4().hex
        self.c.publish(f"{self.prefix}/{op}", json.dumps({**body, "clientToken": token}), qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for topic, doc in self.inbox:
                    if doc.get("clientToken") == token and topic.rsplit("/", 1)[-1] in ("accepted", "rejected"):
                        return topic.rsplit("/", 1)[-1], doc
            time.sleep(0.02)
        raise TimeoutError(op)

    def wait(self, pred, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind, doc = self.request("get", {})
            if kind == "accepted" and pred(doc):
                return doc
            time.sleep(0.2)
        raise AssertionError(f"shadow never satisfied the condition; last: {doc}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request):
    """(url, shadow topic root): IoT Core's '$aws' on mosquitto; amqtt refuses '$' topics from clients."""
    if request.param == "mosquitto":
        from tests.conftest import require_mosquitto

        require_mosquitto()
        return request.getfixturevalue("mosquitto").url, "$aws"
    return request.getfixturevalue("amqtt_broker").url, "local-aws"


def test_local_service_speaks_iot_core_topics(broker):
    broker_url, root = broker
    svc = LocalShadowService(broker_url, topic_root=root).start()
    app = ShadowApp(broker_url, "dev-1", root=root)
    try:
        kind, doc = app.request("get", {})
        assert kind == "rejected" and doc["code"] == 404
        kind, doc = app.request("update", {"state": {"desired": {"x": 1}}})
        assert kind == "accepted" and doc["version"] == 1 and doc["state"] == {"desired": {"x": 1}}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(t.endswith("/update/delta") for t, _ in app.inbox):
            time.sleep(0.02)
        deltas = [d for t, d in app.inbox if t.endswith("/update/delta")]
        assert deltas and deltas[0]["state"] == {"x": 1} and deltas[0]["version"] == 1
        assert any(t.endswith("/update/documents") for t, _ in app.inbox)
        kind, doc = app.request("update", {"state": {"reported": {"x": 1}}, "version": 5})
        assert kind == "rejected" and doc["code"] == 409
        kind, doc = app.request("get", {})
        assert kind == "accepted" and "delta" in doc["state"]
    finally:
        app.close()
        svc.stop()


@pytest.mark.slow
def test_agent_applies_shadow_config_live_and_rejects_with_reasons(broker, tmp_path):
    from device_agent.runtime import attach_config_sync
    from device_agent.shadow.mqtt_shadow import MqttShadowClient

    broker_url, root = broker
    svc = LocalShadowService(broker_url, topic_root=root).start()
    app = ShadowApp(broker_url, "cfg-1", root=root)
    agent, accepted = make_agent(broker_url, tmp_path, thing="cfg-1", accel=20_000.0)
    sync = attach_config_sync(agent, MqttShadowClient(agent.transport, "cfg-1", topic_root=root))
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,))
    worker.start()
    try:
        # the agent reports its configuration on start
        doc = app.wait(lambda d: d["state"].get("reported", {}).get("source", {}).get("sample_interval_s") == 10.0)
        assert doc["state"]["reported"]["health"]["eol_threshold"] == 0.8
        kind, _ = app.request(
            "update",
            {
                "state": {
                    "desired": {
                        "source": {"sample_interval_s": 30, "url": "jbd:/dev/ttyUSB9"},
                        "health": {"eol_threshold": 1.5},
                    }
                }
            },
        )
        assert kind == "accepted"
        doc = app.wait(lambda d: d["state"].get("reported", {}).get("source", {}).get("sample_interval_s") == 30)
        rejected = doc["state"]["reported"]["rejected"]
        assert set(rejected) == {"source.url", "health.eol_threshold"}
        assert "less than 1" in rejected["health.eol_threshold"]
        assert doc["state"]["reported"]["health"]["eol_threshold"] == 0.8  # the last good value stays
        assert "delta" in doc["state"]  # desired still differs where it was refused
        # applied live: the simulator now advances 30 s per poll, without a restart
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and agent.source.interval_s != 30:
            time.sleep(0.05)
        assert agent.source.interval_s == 30 and agent.config.source.sample_interval_s == 30
        assert agent.config.health.eol_threshold == 0.8 and agent.config.source.url == "simulator"
        handled = sync.handled
        # fixing the desired state clears the rejection
        app.request("update", {"state": {"desired": {"health": {"eol_threshold": 0.7}, "source": {"url": None}}}})
        doc = app.wait(lambda d: d["state"]["reported"].get("health", {}).get("eol_threshold") == 0.7)
        assert "rejected" not in doc["state"]["reported"] and "delta" not in doc["state"]
        assert agent.config.health.eol_threshold == 0.7
        time.sleep(1.0)
        assert sync.handled <= handled + 3, "the shadow and the agent are ping-ponging"
    finally:
        stop.set()
        worker.join(30)
        app.close()
        svc.stop()
    # the refusal was also raised as an alarm through the spool
    assert accepted["alarms"]


def test_client_uses_two_subscriptions_and_takes_only_its_own_answer():
    from device_agent.shadow.mqtt_shadow import MqttShadowClient
    from device_agent.uplink.transport import MemoryTransport

    transport = MemoryTransport()
    prefix = "$aws/things/t1/shadow/name/battwin-config"

    def service(topic: str, payload: bytes) -> None:  # another client's answer first, then ours
        if topic == f"{prefix}/get":
            token = json.loads(payload)["clientToken"]
            for who, version in (("someone-else", 9), (token, 3)):
                body = {"state": {"desired": {"log_level": "DEBUG"}}, "version": version, "clientToken": who}
                transport.publish(f"{prefix}/get/accepted", json.dumps(body).encode())

    transport.on_publish = service
    client = MqttShadowClient(transport, "t1")
    doc = client.get(timeout=5)
    assert doc is not None and doc["version"] == 3 and client.version == 3
    assert [pattern for pattern, _ in transport._handlers] == [f"{prefix}/get/+", f"{prefix}/update/+"]
    assert [t for t, _ in transport.published if not t.endswith("/accepted")] == [f"{prefix}/get"]
