"""IoT Core operations (the nucleus' mqttproxy): PublishToIoTCore, SubscribeToIoTCore, forwarding to a broker.

PublishToIoTCore is recorded in order (``published``) and either forwarded to a real MQTT broker or
echoed to matching SubscribeToIoTCore streams, as the cloud broker would.

Lite flavour: iotcored's store of unacknowledged QoS 1 publishes (``modules/iotcored/src/mqtt.c``). Every QoS 1
publish is answered at once (lite answers when the packet is written, before IoT Core's PUBACK) and occupies
its MQTT PUBLISH packet's bytes in a store of :data:`LITE_STORE_BYTES` and :data:`LITE_STORE_RECORDS` records
until the emulated cloud acknowledges it: after ``cloud_ack_delay_s`` (0: at once, the store never fills),
or, while :meth:`IoTCoreOps.hold_cloud_acks` is on, when the test calls :meth:`IoTCoreOps.release_cloud_acks`.
A publish that does not fit is refused with lite's ServiceError "Failed to publish the message." and is not
recorded (``store_refusals`` counts them). The classic flavour has no such store (its spooler is not emulated).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from devkit.nucleus.acl import MQTT_PROXY
from devkit.nucleus.core import (
    MAX_IOT_PAYLOAD,
    EmulatorCore,
    IpcError,
    PublishedMessage,
    b64_arg,
    is_basic_ingest,
    log,
    mqtt_filter_matches,
    qos_arg,
    topic_arg,
)
from devkit.nucleus.streams import NS, Connection, Reply, Stream

#: lite's iotcored: IOTCORED_UNACKED_PACKET_BUFFER_SIZE (3 × IOTCORED_NETWORK_BUFFER_SIZE 5,000) and
#: IOTCORED_MQTT_MAX_PUBLISH_RECORDS (modules/iotcored/src/mqtt.c)
LITE_STORE_BYTES = 15_000
LITE_STORE_RECORDS = 10
#: what ggipcd answers when iotcored cannot take a publish (modules/ggipcd/src/services/mqttproxy/publish_to_iot_core.c)
LITE_PUBLISH_FAILED = "Failed to publish the message."


def _publish_packet_size(topic: str, payload_len: int) -> int:
    """An MQTT 3.1.1 QoS 1 PUBLISH packet: fixed header (type byte, remaining length as a varint), topic
    (length-prefixed), packet id, payload (MQTT 3.1.1 §2.2, §3.3)."""
    remaining = 2 + len(topic.encode()) + 2 + payload_len
    varint = 1
    while remaining >= 128**varint:
        varint += 1
    return 1 + varint + remaining


@dataclass
class UnackedStore:
    """Lite's store of QoS 1 publishes awaiting the cloud's PUBACK (only touched on the emulator's loop)."""

    max_bytes: int = LITE_STORE_BYTES
    max_records: int = LITE_STORE_RECORDS
    records: dict[int, int] = field(default_factory=dict)  # packet id -> packet bytes
    next_id: int = 1
    held: list[int] = field(default_factory=list)  # ids whose PUBACK waits for release_cloud_acks()
    refusals: int = 0
    peak_bytes: int = 0
    peak_records: int = 0

    @property
    def used(self) -> int:
        return sum(self.records.values())

    def store(self, size: int) -> int | None:
        """Keep a ``size``-byte packet; its packet id, or None when it does not fit (as lite's mqtt_store_packet)."""
        if len(self.records) >= self.max_records:
            log.error("Not enough spots in record array to store one more packet.")  # lite's words
            return None
        if self.used + size > self.max_bytes:
            log.error("Not enough space in buffer to store one more packet.")
            return None
        packet_id, self.next_id = self.next_id, self.next_id % 65_535 + 1
        self.records[packet_id] = size
        self.peak_bytes = max(self.peak_bytes, self.used)
        self.peak_records = max(self.peak_records, len(self.records))
        return packet_id


class IoTCoreOps(EmulatorCore):
    """IoT Core operations (a mixin of NucleusEmulator)."""

    cloud_ack_delay_s: float
    _store: UnackedStore | None
    _hold_acks: bool

    def _init_unacked_store(self, cloud_ack_delay_s: float) -> None:
        """Called by the constructor: the lite flavour gets iotcored's store (module docstring)."""
        self.cloud_ack_delay_s = cloud_ack_delay_s
        self._store = UnackedStore() if self.rules.name == "lite" else None
        self._hold_acks = False

    @property
    def store_refusals(self) -> int:
        """Publishes refused because lite's unacknowledged store was full (0 on classic)."""
        return self._call(lambda: self._store.refusals if self._store is not None else 0)

    def store_usage(self) -> tuple[int, int, int, int]:
        """Lite's store now and at its fullest: (records, bytes, peak records, peak bytes)."""

        def _usage() -> tuple[int, int, int, int]:
            st = self._store
            return (0, 0, 0, 0) if st is None else (len(st.records), st.used, st.peak_records, st.peak_bytes)

        return self._call(_usage)

    def hold_cloud_acks(self, hold: bool = True) -> None:
        """While on, the emulated cloud acknowledges nothing (lite's store keeps every QoS 1 publish) until
        :meth:`release_cloud_acks`; turning it off releases what is held."""

        def _set() -> None:
            self._hold_acks = hold
            if not hold:
                self._release_held()

        self._call(_set)

    def release_cloud_acks(self) -> int:
        """The cloud acknowledges every publish held so far; returns how many."""
        return self._call(self._release_held)

    def _release_held(self) -> int:
        st = self._store
        if st is None:
            return 0
        held, st.held = st.held, []
        for packet_id in held:
            st.records.pop(packet_id, None)
        return len(held)

    def _cloud_ack(self, packet_id: int) -> None:
        if self._store is not None:
            self._store.records.pop(packet_id, None)

    def _keep_until_acked(self, topic: str, payload: bytes) -> None:
        """Lite: put a QoS 1 publish in iotcored's store until the emulated cloud acknowledges it; raise
        lite's ServiceError when it does not fit."""
        st = self._store
        if st is None or (self.cloud_ack_delay_s <= 0 and not self._hold_acks):
            return  # acknowledged at once: the store never holds anything
        packet_id = st.store(_publish_packet_size(topic, len(payload)))
        if packet_id is None:
            st.refusals += 1
            log.error("MQTT PUBLISH failed with status MQTTPublishStoreFailed")
            raise IpcError("ServiceError", LITE_PUBLISH_FAILED)
        if self._hold_acks:
            st.held.append(packet_id)
        else:
            self._require_loop().call_later(self.cloud_ack_delay_s, self._cloud_ack, packet_id)

    def _op_publish_to_iot_core(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        topic = topic_arg(req, "topicName", is_filter=False)
        qos = qos_arg(req.get("qos"))
        payload = b64_arg(req.get("payload"), "payload")
        if len(payload) > MAX_IOT_PAYLOAD:
            raise IpcError("InvalidArgumentsError", f"payload exceeds {MAX_IOT_PAYLOAD} bytes")
        self._authorize(conn.component, MQTT_PROXY, "PublishToIoTCore", topic)
        if qos == 1:
            self._keep_until_acked(topic, payload)
        record = PublishedMessage(topic, payload, qos, bool(req.get("retain")), conn.component, time.time())
        with self._cond:
            self._published.append(record)
            self._cond.notify_all()
        if self._forwarder is not None:
            self._forwarder.publish(topic, payload)
        elif not is_basic_ingest(topic):  # Basic Ingest goes to a rule, never to a subscriber
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
