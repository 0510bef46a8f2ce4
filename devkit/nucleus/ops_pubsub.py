"""Local publish/subscribe operations: PublishToTopic, SubscribeToTopic (MQTT wildcards, receive modes)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from devkit.nucleus.acl import PUBSUB
from devkit.nucleus.core import EmulatorCore, IpcError, b64_arg, mqtt_filter_matches, topic_arg
from devkit.nucleus.streams import NS, Connection, Reply, Stream


class LocalPubSubOps(EmulatorCore):
    """Local pub/sub operations (a mixin of NucleusEmulator)."""

    def _op_publish_to_topic(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        topic = topic_arg(req, "topic", is_filter=False)
        message = req.get("publishMessage") or {}
        if not isinstance(message, dict):
            raise IpcError("InvalidArgumentsError", "publishMessage must be an object")
        self._authorize(conn.component, PUBSUB, "PublishToTopic", topic)
        content: bytes | Mapping[str, Any]
        if isinstance(message.get("jsonMessage"), dict):
            content = message["jsonMessage"].get("message") or {}
            if not isinstance(content, Mapping):
                raise IpcError("InvalidArgumentsError", "jsonMessage.message must be an object")
        elif isinstance(message.get("binaryMessage"), dict):
            content = b64_arg(message["binaryMessage"].get("message"), "binaryMessage.message")
        else:
            raise IpcError("InvalidArgumentsError", "publishMessage needs jsonMessage or binaryMessage")
        self._require_loop().call_soon(self._deliver_local, topic, content, conn.component)
        return Reply(NS + "PublishToTopicResponse", {})

    def _op_subscribe_to_topic(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        topic = topic_arg(req, "topic", is_filter=True)
        mode = req.get("receiveMode")
        if mode not in (None, "RECEIVE_ALL_MESSAGES", "RECEIVE_MESSAGES_FROM_OTHERS"):
            raise IpcError("InvalidArgumentsError", f"invalid receiveMode {mode!r}")
        self._authorize(conn.component, PUBSUB, "SubscribeToTopic", topic)
        # the nucleus' default: a wildcard filter does not get the subscriber's own messages
        receive_all = ("+" not in topic and "#" not in topic) if mode is None else mode == "RECEIVE_ALL_MESSAGES"
        stream = Stream(
            conn,
            sid,
            "pubsub",
            NS + "SubscriptionResponseMessage",
            topic_filter=topic,
            receive_all=receive_all,
            component=conn.component,
        )
        return Reply(NS + "SubscribeToTopicResponse", {}, stream)

    def _deliver_local(self, topic: str, content: bytes | Mapping[str, Any], source: str) -> None:
        context = {"topic": topic}
        if isinstance(content, bytes | bytearray):
            body = {"binaryMessage": {"message": base64.b64encode(bytes(content)).decode(), "context": context}}
        else:
            body = {"jsonMessage": {"message": dict(content), "context": context}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind != "pubsub" or not mqtt_filter_matches(stream.topic_filter, topic):
                    continue
                if not stream.receive_all and stream.component == source:
                    continue
                stream.push(body)
