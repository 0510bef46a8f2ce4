"""ShadowClient over MQTT: AWS IoT Core's reserved named-shadow topics (works with the local shadow service).

Requests are correlated by ``clientToken``; responses arrive on ``…/accepted`` or ``…/rejected``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import Future
from typing import Any

from device_agent.shadow.client import CONFIG_SHADOW, DeltaHandler, ShadowError
from device_agent.shadow.topics import AWS_ROOT, shadow_prefix
from device_agent.uplink.transport import Transport

log = logging.getLogger(__name__)


class MqttShadowClient:
    def __init__(
        self, transport: Transport, thing_name: str, shadow_name: str = CONFIG_SHADOW, topic_root: str = AWS_ROOT
    ) -> None:
        self.transport = transport
        self.thing_name = thing_name
        self.shadow_name = shadow_name
        self.prefix = shadow_prefix(thing_name, shadow_name, topic_root)
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._delta_handlers: list[DeltaHandler] = []
        self._subscribed = False

    def _ensure_subscribed(self, timeout: float) -> None:
        if self._subscribed:
            return
        futures = [
            self.transport.subscribe(f"{self.prefix}/{op}/{result}", self._on_response)
            for op in ("get", "update")
            for result in ("accepted", "rejected")
        ]
        futures.append(self.transport.subscribe(f"{self.prefix}/update/delta", self._on_delta))
        for f in futures:
            f.result(timeout)
        self._subscribed = True

    def _request(self, op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.transport.wait_connected(timeout):
            raise ShadowError(503, "not connected")
        self._ensure_subscribed(timeout)
        token = uuid.uuid4().hex[:32]
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[token] = fut
        try:
            self.transport.publish(f"{self.prefix}/{op}", json.dumps({**body, "clientToken": token}).encode())
            return fut.result(timeout)
        except TimeoutError:
            raise ShadowError(504, f"no answer to shadow {op} within {timeout} s") from None
        finally:
            with self._lock:
                self._pending.pop(token, None)

    def get(self, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            return self._request("get", {}, timeout)
        except ShadowError as exc:
            if exc.code == 404:
                return None
            raise

    def update(self, document: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return self._request("update", document, timeout)

    def on_delta(self, handler: DeltaHandler) -> None:
        self._delta_handlers.append(handler)
        self._ensure_subscribed(10.0)

    # -- callbacks (transport threads) -----------------------------------------------------------
    def _on_response(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            log.warning("unparseable shadow response", extra={"topic": topic})
            return
        if not isinstance(doc, dict):
            return
        with self._lock:
            fut = self._pending.get(str(doc.get("clientToken", "")))
        if fut is None or fut.done():
            return
        if topic.endswith("/rejected"):
            fut.set_exception(ShadowError(int(doc.get("code", 500)), str(doc.get("message", ""))))
        else:
            fut.set_result(doc)

    def _on_delta(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            state, version = doc["state"], int(doc["version"])
        except (ValueError, KeyError, TypeError):
            log.warning("unparseable shadow delta", extra={"topic": topic})
            return
        for handler in list(self._delta_handlers):
            handler(state, version)
