"""The device-shadow interface the agent's configuration sync uses.

Its implementation is ``device_agent.shadow.mqtt_shadow.MqttShadowClient``: IoT Core's reserved shadow
topics (``$aws/things/<thing>/shadow/name/<shadow>/get|update`` and their ``accepted``/``rejected``/
``delta``/``documents``) over any transport — MQTT directly, or Greengrass IPC (PublishToIoTCore /
SubscribeToIoTCore), which works on nucleus classic and lite alike (lite has no shadow IPC).

Documents follow AWS IoT's shadow format: ``{"state": {"desired": {...}, "reported": {...}}, "version": n,
"metadata": {...}, "timestamp": t}``; a delta message is ``{"state": {...}, "version": n, ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

CONFIG_SHADOW = "battwin-config"

DeltaHandler = Callable[[dict[str, Any], int], None]


class ShadowError(RuntimeError):
    """The shadow service refused or failed a request (``code`` as AWS returns it: 400, 404, 409 ...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"shadow error {code}: {message}")
        self.code = code
        self.message = message


class ShadowClient(Protocol):
    thing_name: str
    shadow_name: str

    def get(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The whole document, or None if the shadow does not exist (404)."""

    def update(self, document: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send ``{"state": {...}, ["version": n]}``; returns the accepted response or raises ShadowError."""

    def on_delta(self, handler: DeltaHandler) -> None:
        """Call ``handler(delta_state, version)`` for every delta (desired ≠ reported)."""
