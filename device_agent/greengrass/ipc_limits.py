"""What the Greengrass nucleus accepts over IPC: the size of a PublishToIoTCore frame, the in-flight store of
nucleus lite, and which refusals are the nucleus' answers. The figures and why: see
:mod:`device_agent.greengrass.ipc_transport` (the transport that applies them).
"""

from __future__ import annotations

import json
import logging

#: nucleus lite's GGL_IPC_MAX_MSG_LEN (the classic nucleus accepts far more; IoT Core then allows 128 KiB)
IPC_MAX_MESSAGE_BYTES = 10_000
#: a PublishToIoTCore frame without its topic and base64 payload, as awsiotsdk writes it: prelude (12), headers
#: (:message-type, :message-flags, :stream-id, operation, service-model-type, :content-type: 192), the JSON
#: ``{"topicName": "", "qos": "1", "payload": ""}`` (44) and the CRC (4); measured against the emulator
PUBLISH_FRAME_OVERHEAD = 252
#: nucleus lite's iotcored store of QoS 1 publishes awaiting IoT Core's PUBACK (modules/iotcored/src/mqtt.c)
LITE_UNACKED_STORE_BYTES = 15_000
LITE_UNACKED_STORE_RECORDS = 10
#: what the transport keeps in flight by default: under lite's store with room for the nucleus' own publishes
DEFAULT_INFLIGHT_MESSAGES = 8
DEFAULT_INFLIGHT_BYTES = 14_000
#: how long after the nucleus' answer a publish is still counted (lite answers before IoT Core's PUBACK)
DEFAULT_STORE_HOLD_S = 0.25
MAX_STORE_HOLD_S = 8.0


def mqtt_publish_packet_bytes(topic: str, payload_len: int, qos: int = 1) -> int:
    """The size of the MQTT 3.1.1 PUBLISH packet the nucleus writes for ``topic`` and a ``payload_len``-byte
    payload: fixed header (1 byte + the remaining length's 1–4 bytes), topic (2-byte length + UTF-8),
    packet id (2 bytes, QoS > 0) and the payload — what lite's iotcored keeps in its store."""
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


def publish_payload_budget(topic: str, max_message_bytes: int = IPC_MAX_MESSAGE_BYTES) -> int:
    """The largest payload whose PublishToIoTCore frame on ``topic`` is at most ``max_message_bytes``."""
    topic_json = len(json.dumps(topic)) - 2  # as the client escapes it
    room = max_message_bytes - PUBLISH_FRAME_OVERHEAD - topic_json
    return max(0, 3 * (room // 4))  # base64: 4 characters per 3 bytes, the last group padded


def describe_refusal(kind: str, message: str) -> tuple[int, str]:
    """The log level and text for a publish the nucleus refused with error ``kind`` and ``message``: only an
    UnauthorizedError points at the accessControl; a full spooler (the classic nucleus answers ServiceError
    "... Spooler queue is full and new message would not be added into spooler") says so; anything else
    says what the nucleus answered."""
    if kind == "UnauthorizedError":
        return logging.ERROR, (
            "the nucleus refused a publish as not authorized; check the component's accessControl "
            "(aws.greengrass.ipc.mqttproxy, aws.greengrass#PublishToIoTCore) and the topic settings"
        )
    low = message.lower()
    if "spool" in low and "full" in low:
        return logging.WARNING, (
            "the nucleus' MQTT spooler is full (the core is offline or its spooler is smaller than the backlog); "
            "the message stays in the agent's spool and is sent again"
        )
    if kind == "ServiceError" and not message.strip():
        # nucleus lite 2.6 answers so while its own IoT Core connection is down (seen on a real lite: every
        # publish during a broker outage); the publisher pauses and sends the message again
        return logging.WARNING, (
            "the nucleus refused a publish with ServiceError and no reason (nucleus lite answers so while its "
            "IoT Core connection is down); the message stays in the agent's spool and is sent again"
        )
    return logging.ERROR, f"the nucleus refused a publish with {kind}: {message[:300]}"


def is_modeled_refusal(exc: BaseException) -> bool:
    """An error the nucleus answered with (as opposed to a broken connection)."""
    try:
        from awsiot.greengrasscoreipc.model import GreengrassCoreIPCError
    except ImportError:  # pragma: no cover - awsiotsdk is a dependency of this module
        return False
    return isinstance(exc, GreengrassCoreIPCError)


class InflightBudget:
    """Records and bytes counted in flight (see the module docstring); admitting is all-or-nothing. Not
    thread-safe by itself: the transport holds its lock around every call."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"the in-flight budget must be positive, got {max_messages} messages, {max_bytes} B")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self.peak_messages = 0
        self.peak_bytes = 0

    def admit(self, size: int) -> bool:
        """Count a ``size``-byte packet if it fits (a lone packet always does: it could never go otherwise)."""
        if self.messages >= self.max_messages or (self.messages and self.bytes + size > self.max_bytes):
            return False
        self.messages += 1
        self.bytes += size
        self.peak_messages = max(self.peak_messages, self.messages)
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def release(self, size: int) -> None:
        self.messages = max(0, self.messages - 1)
        self.bytes = max(0, self.bytes - size)
