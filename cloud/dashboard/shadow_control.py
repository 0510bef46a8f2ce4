"""Editing a device's configuration shadow (``battwin-config``) from the dashboard.

:class:`ShadowControl` is what the dashboard needs: read the document, merge a change into ``desired``.
Two implementations: :class:`MqttShadowControl` speaks IoT Core's reserved shadow topics over MQTT (the
local shadow service in ``battwin demo``, or mosquitto with it), :class:`IotDataShadowControl` calls the
IoT data plane with boto3 (``get_thing_shadow`` / ``update_thing_shadow``) — production.

:func:`shadow_view` turns a document into what the UI shows: desired, reported (the agent's live values),
``rejected`` (field → reason, reported by the agent) and the pending delta.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from typing import Any, Protocol

from device_agent.config import MqttSettings
from device_agent.shadow.client import CONFIG_SHADOW, ShadowError
from device_agent.shadow.mqtt_shadow import MqttShadowClient
from device_agent.shadow.topics import AWS_ROOT, compute_delta
from device_agent.uplink.mqtt_transport import MqttTransport

log = logging.getLogger("battwin.dashboard.shadow")


class ShadowControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ShadowControl(Protocol):
    #: shown in the UI: how edits travel
    description: str

    def get(self, thing: str) -> dict[str, Any] | None:
        """The shadow document (``state``, ``metadata``, ``version``), or None if the thing has none yet."""
        ...

    def update_desired(self, thing: str, desired: dict[str, Any]) -> dict[str, Any]:
        """Merge ``desired`` into the document's desired state; returns the update's accepted document."""
        ...

    def close(self) -> None: ...


class MqttShadowControl:
    """Shadow requests over MQTT (IoT Core's topic layout under ``topic_root``)."""

    def __init__(
        self,
        broker_url: str,
        topic_root: str = AWS_ROOT,
        shadow_name: str = CONFIG_SHADOW,
        timeout_s: float = 10.0,
        mqtt: MqttSettings | None = None,
    ) -> None:
        settings = mqtt or MqttSettings(url=broker_url)
        self.transport = MqttTransport(settings, client_id=f"battwin-dashboard-{os.getpid()}-{secrets.token_hex(3)}")
        self.transport.start()
        self.topic_root = topic_root
        self.shadow_name = shadow_name
        self.timeout_s = timeout_s
        self.description = f"shadow over MQTT ({broker_url}, {topic_root}/things/…/shadow/name/{shadow_name})"
        self._clients: dict[str, MqttShadowClient] = {}
        self._lock = threading.Lock()

    def _client(self, thing: str) -> MqttShadowClient:
        with self._lock:
            found = self._clients.get(thing)
            if found is None:
                found = self._clients[thing] = MqttShadowClient(
                    self.transport, thing, self.shadow_name, self.topic_root
                )
            return found

    def get(self, thing: str) -> dict[str, Any] | None:
        try:
            return self._client(thing).get(self.timeout_s)
        except ShadowError as exc:
            raise ShadowControlError(exc.code if 400 <= exc.code < 600 else 502, str(exc)) from None

    def update_desired(self, thing: str, desired: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._client(thing).update({"state": {"desired": desired}}, self.timeout_s)
        except ShadowError as exc:
            raise ShadowControlError(exc.code if 400 <= exc.code < 600 else 502, str(exc)) from None

    def close(self) -> None:
        self.transport.stop()


class IotDataShadowControl:
    """The IoT data plane through boto3 (``iot-data``); the endpoint is looked up when not given."""

    def __init__(self, shadow_name: str = CONFIG_SHADOW, endpoint_url: str | None = None, client: Any = None) -> None:
        import boto3

        self.shadow_name = shadow_name
        if client is None:
            if endpoint_url is None and not os.environ.get("AWS_ENDPOINT_URL"):
                address = boto3.client("iot").describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
                endpoint_url = f"https://{address}"
            client = boto3.client("iot-data", endpoint_url=endpoint_url)
        self.client = client
        self.description = f"shadow via the IoT data plane ({shadow_name})"

    def _call(self, fn: Any, **kwargs: Any) -> dict[str, Any] | None:
        try:
            resp = fn(thingName=kwargs.pop("thing"), shadowName=self.shadow_name, **kwargs)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code == "ResourceNotFoundException":
                return None
            status = int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 502) or 502)
            raise ShadowControlError(
                status if 400 <= status < 600 else 502, f"{code or type(exc).__name__}: {exc}"
            ) from None
        doc = json.loads(resp["payload"].read())
        return doc if isinstance(doc, dict) else None

    def get(self, thing: str) -> dict[str, Any] | None:
        return self._call(self.client.get_thing_shadow, thing=thing)

    def update_desired(self, thing: str, desired: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps({"state": {"desired": desired}}).encode()
        doc = self._call(self.client.update_thing_shadow, thing=thing, payload=payload)
        if doc is None:
            raise ShadowControlError(404, f"no thing {thing!r} in the IoT registry")
        return doc

    def close(self) -> None:
        return None


def shadow_view(doc: dict[str, Any] | None) -> dict[str, Any]:
    """A shadow document → {exists, version, desired, reported, rejected, delta, reported_at}."""
    if not doc:
        return {"exists": False, "version": None, "desired": {}, "reported": {}, "rejected": {}, "delta": None}
    state = doc.get("state") or {}
    desired = state.get("desired") or {}
    reported = dict(state.get("reported") or {})
    rejected = reported.pop("rejected", None) or {}
    meta = (doc.get("metadata") or {}).get("reported") or {}
    stamps = [v for v in _leaf_values(meta) if isinstance(v, int | float)]
    return {
        "exists": True,
        "version": doc.get("version"),
        "desired": desired,
        "reported": reported,
        "rejected": rejected if isinstance(rejected, dict) else {},
        "delta": compute_delta(desired, reported),
        "reported_at": max(stamps) if stamps else None,
    }


def _leaf_values(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        if set(tree) == {"timestamp"}:
            return [tree["timestamp"]]
        return [v for value in tree.values() for v in _leaf_values(value)]
    return []
