"""IoT Core operations (the nucleus' mqttproxy): PublishToIoTCore, SubscribeToIoTCore, forwarding to a broker.

PublishToIoTCore is recorded in order (``published``) and either forwarded to a real MQTT broker or
echoed to matching SubscribeToIoTCore streams, as the cloud broker would.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from device_agent.greengrass.emulator.acl import MQTT_PROXY
from device_agent.greengrass.emulator.core import (
    MAX_IOT_PAYLOAD,
    EmulatorCore,
    IpcError,
    PublishedMessage,
    b64_arg,
    log,
    mqtt_filter_matches,
    qos_arg,
    topic_arg,
)
from device_agent.greengrass.emulator.streams import NS, Connection, Reply, Stream


class IoTCoreOps(EmulatorCore):
    """IoT Core operations (a mixin of NucleusEmulator)."""

    def _op_publish_to_iot_core(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        topic = topic_arg(req, "topicName", is_filter=False)
        qos = qos_arg(req.get("qos"))
        payload = b64_arg(req.get("payload"), "payload")
        if len(payload) > MAX_IOT_PAYLOAD:
            raise IpcError("InvalidArgumentsError", f"payload exceeds {MAX_IOT_PAYLOAD} bytes")
        self._authorize(conn.component, MQTT_PROXY, "PublishToIoTCore", topic)
        record = PublishedMessage(topic, payload, qos, bool(req.get("retain")), conn.component, time.time())
        with self._cond:
            self._published.append(record)
            self._cond.notify_all()
        if self._forwarder is not None:
            self._forwarder.publish(topic, payload)
        else:
            loop = self._require_loop()
            loop.call_soon(self._deliver_iot, topic, payload)  # the cloud echoes it to subscribers
            loop.call_soon(self._answer_cloud_shadow, topic, payload)
        return Reply(NS + "PublishToIoTCoreResponse", {})

    def _answer_cloud_shadow(self, topic: str, payload: bytes) -> None:
        """IoT Core's shadow service (``cloud_shadow``): answers a shadow request topic, ignores the rest."""
        answers = self.cloud_shadow.handle(topic, payload)
        if answers is None:
            return
        self._shadow_changed()
        for answer_topic, answer in answers:
            self._deliver_iot(answer_topic, answer)

    def _op_subscribe_to_iot_core(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        topic = topic_arg(req, "topicName", is_filter=True)
        qos_arg(req.get("qos"))
        self._authorize(conn.component, MQTT_PROXY, "SubscribeToIoTCore", topic)
        if self._forwarder is not None and topic not in self._forward_subs:
            self._forward_subs[topic] = self._forwarder.subscribe(topic, self.deliver_from_cloud)
        stream = Stream(conn, sid, "iot", NS + "IoTCoreMessage", topic_filter=topic, component=conn.component)
        return Reply(NS + "SubscribeToIoTCoreResponse", {}, stream)

    def _deliver_iot(self, topic: str, payload: bytes) -> None:
        body = {"message": {"topicName": topic, "payload": base64.b64encode(payload).decode()}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind == "iot" and mqtt_filter_matches(stream.topic_filter, topic):
                    stream.push(body)

    # -- forwarding to a real broker --------------------------------------------------------------
    def _start_forwarder(self, url: str) -> None:
        from device_agent.config import MqttSettings
        from device_agent.uplink.mqtt_transport import MqttTransport

        transport = MqttTransport(MqttSettings(url=url), client_id=f"gg-emulator-{self.thing_name}"[:128])
        transport.start()
        self._forwarder = transport
        log.info("forwarding IoT Core traffic to a broker", extra={"broker": url})

    def deliver_from_cloud(self, topic: str, payload: bytes) -> None:
        """A message from IoT Core on ``topic``: delivered to matching SubscribeToIoTCore streams."""
        self._call(self._deliver_iot, topic, payload)
