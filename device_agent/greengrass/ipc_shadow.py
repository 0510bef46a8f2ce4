"""ShadowClient (``device_agent.shadow.client``) over Greengrass IPC: the ShadowManager component.

* ``get`` → GetThingShadow (a missing shadow is None), ``update`` → UpdateThingShadow, payloads are
  the shadow JSON documents as bytes; ShadowManager keeps the shadow locally and syncs it with IoT Core
  when configured to (``synchronize`` in its configuration; see docs/greengrass.md).
* ``on_delta`` → SubscribeToTopic on the local topic
  ``$aws/things/<thing>/shadow/name/<shadow>/update/delta``, on which ShadowManager publishes every
  delta (local updates and those synced down from the cloud); re-subscribed after every reconnection.
* Errors come back as :class:`~device_agent.shadow.client.ShadowError` with the code the shadow service
  uses: 400 invalid request, 401 not authorized (the component's accessControl), 404 not found, 409 version
  conflict, 413 document too large, 500 service error, 503 not connected, 504 timed out.

The component's recipe must allow GetThingShadow/UpdateThingShadow on
``$aws/things/<thing>/shadow/name/<shadow>`` (ShadowManager) and SubscribeToTopic on the delta topic
(pub/sub) — ``recipes/com.battwin.Agent.yaml`` does, for ``{iot:thingName}`` and ``battwin-config``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from device_agent.greengrass.connection import ClientProvider, IpcUnavailable, StreamSubscription, as_provider
from device_agent.shadow.client import CONFIG_SHADOW, DeltaHandler, ShadowError
from device_agent.shadow.topics import shadow_prefix

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)

_CODES = {
    "ResourceNotFoundError": 404,
    "ConflictError": 409,
    "InvalidArgumentsError": 400,
    "UnauthorizedError": 401,
    "ServiceError": 500,
}


def shadow_error(exc: BaseException) -> ShadowError:
    """The ShadowError for an exception from an IPC shadow call."""
    if isinstance(exc, ShadowError):
        return exc
    if isinstance(exc, concurrent.futures.TimeoutError | TimeoutError):
        return ShadowError(504, "no answer from ShadowManager in time")
    kind = type(exc).__name__
    message = str(getattr(exc, "message", None) or exc)
    code = _CODES.get(kind)
    if code is None:  # the connection broke (StreamClosedError, ConnectionClosedError, EventStreamError …)
        return ShadowError(503, f"{kind}: {message}")
    if code == 400 and "maximum size" in message:
        code = 413
    return ShadowError(code, message)


def _decode(payload: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(payload or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ShadowError(500, "ShadowManager returned a document that is not JSON") from None
    if not isinstance(doc, dict):
        raise ShadowError(500, "ShadowManager returned a document that is not a JSON object")
    return doc


class IpcShadowClient:
    """See the module docstring. ``client``: None (a connection from the environment, owned and closed by
    :meth:`close`), an :class:`~device_agent.greengrass.connection.IpcConnection` to share (e.g. the
    transport's ``connection``), or a ready ``GreengrassCoreIPCClientV2``."""

    def __init__(
        self,
        thing_name: str,
        shadow_name: str = CONFIG_SHADOW,
        client: ClientProvider | GreengrassCoreIPCClientV2 | None = None,
    ) -> None:
        self.thing_name = thing_name
        self.shadow_name = shadow_name
        provider, owned = as_provider(client)
        self.connection: ClientProvider = provider
        self._deltas: StreamSubscription[DeltaHandler] = StreamSubscription(
            provider, owned, "shadow delta", self._open_stream, {"topic": self.delta_topic}
        )
        provider.start()

    @property
    def topic_prefix(self) -> str:
        return shadow_prefix(self.thing_name, self.shadow_name or None)

    @property
    def delta_topic(self) -> str:
        return f"{self.topic_prefix}/update/delta"

    def close(self) -> None:
        self._deltas.close()

    # -- requests ---------------------------------------------------------------------------------
    def _client(self, timeout: float) -> GreengrassCoreIPCClientV2:
        if not self.connection.wait_connected(timeout):
            raise ShadowError(503, "not connected to the Greengrass nucleus")
        try:
            return self.connection.client()
        except IpcUnavailable as exc:
            raise ShadowError(503, str(exc)) from None

    def _call(self, name: str, timeout: float, **kwargs: Any) -> Any:
        deadline = time.monotonic() + timeout
        client = self._client(timeout)
        try:
            future = getattr(client, name)(thing_name=self.thing_name, shadow_name=self.shadow_name or None, **kwargs)
            return future.result(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            raise shadow_error(exc) from None

    def get(self, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            response = self._call("get_thing_shadow_async", timeout)
        except ShadowError as exc:
            if exc.code == 404:
                return None
            raise
        return _decode(response.payload)

    def update(self, document: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        try:
            payload = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ShadowError(400, f"the document is not JSON-serialisable: {exc}") from None
        response = self._call("update_thing_shadow_async", timeout, payload=payload)
        return _decode(response.payload)

    def delete(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """Delete the shadow (needs DeleteThingShadow in accessControl); None if it did not exist."""
        try:
            response = self._call("delete_thing_shadow_async", timeout)
        except ShadowError as exc:
            if exc.code == 404:
                return None
            raise
        return _decode(response.payload)

    # -- deltas -----------------------------------------------------------------------------------
    def on_delta(self, handler: DeltaHandler, timeout: float = 10.0) -> None:
        """Register ``handler(delta_state, version)``. If connected, the subscription is made now, and if
        it fails (refused: 401, connection lost: 503) ShadowError is raised and the handler is not
        registered; otherwise it is made when the connection comes up (and after every reconnection)."""
        try:
            self._deltas.add(handler, timeout)
        except Exception as exc:
            raise shadow_error(exc) from None

    def _open_stream(self, client: GreengrassCoreIPCClientV2) -> tuple[concurrent.futures.Future[Any], Any]:
        response, operation = client.subscribe_to_topic_async(
            topic=self.delta_topic, on_stream_event=self._on_event, on_stream_error=self._on_stream_error
        )
        return response, operation

    def _on_stream_error(self, error: Exception) -> bool:
        log.warning("shadow delta stream error", extra={"topic": self.delta_topic, "error": str(error)[:300]})
        return False

    def _on_event(self, event: Any) -> None:
        raw: Any = None
        if event.binary_message is not None:
            raw = event.binary_message.message
        elif event.json_message is not None:
            raw = event.json_message.message
        try:
            doc = json.loads(raw) if isinstance(raw, bytes | bytearray | str) else raw
            state, version = doc["state"], int(doc["version"])
            if not isinstance(state, dict):
                raise TypeError("state is not an object")
        except (ValueError, KeyError, TypeError):
            log.warning("unparseable shadow delta", extra={"topic": self.delta_topic})
            return
        for handler in self._deltas.listeners():
            try:
                handler(state, version)
            except Exception:
                log.exception("shadow delta handler failed", extra={"topic": self.delta_topic})
