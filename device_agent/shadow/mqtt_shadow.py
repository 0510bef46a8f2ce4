"""ShadowClient over IoT Core's reserved named-shadow MQTT topics, on any :class:`Transport`.

One client for both ways the agent reaches IoT Core — only the pub/sub transport differs:

* direct MQTT (``MqttTransport``): to IoT Core, or to a broker with the local shadow service
  (``devkit.local_shadow``);
* Greengrass IPC (``IpcTransport``): PublishToIoTCore / SubscribeToIoTCore through the nucleus — works on
  nucleus classic and on nucleus lite, which has no shadow IPC (no ShadowManager).

Topics (``P`` = ``$aws/things/<thing>/shadow/name/<shadow>``): requests are published to ``P/get`` and
``P/update``; answers arrive on the two subscriptions ``P/get/+`` (``accepted``, ``rejected``) and
``P/update/+`` (``accepted``, ``rejected``, ``delta``, ``documents``). Exactly these topics are what the
Greengrass component's accessControl allows.

Semantics (AWS IoT Developer Guide, "Device Shadow service MQTT topics"):

* every request carries a fresh ``clientToken``; its answer is the ``accepted``/``rejected`` message that
  echoes that token (other clients' answers on the same topics are ignored);
* ``rejected`` carries ``{"code", "message"}`` → :class:`ShadowError` (404 on get = no shadow → None);
* the shadow ``version`` seen in answers and deltas is tracked; a delta older than the newest version
  already seen is not handed on (MQTT does not promise order; a newer document supersedes it): the client
  reads the shadow again instead and hands on the delta of that current document. This also recovers when
  the versions went back (a shadow deleted for more than 48 hours starts again from 0);
* a request whose publish the transport fails (not connected, refused by a policy) fails at once with
  503 instead of waiting for an answer that cannot come (413 when it is larger than the transport carries);
  no answer in time is 504.
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
from device_agent.uplink.transport import MessageTooLarge, Transport

log = logging.getLogger(__name__)

OPERATIONS = ("get", "update")


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
        self._resyncing = False
        #: the newest shadow version seen (answers and deltas); None before the first one
        self.version: int | None = None

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The two topic filters this client subscribes to."""
        return tuple(f"{self.prefix}/{op}/+" for op in OPERATIONS)

    def _ensure_subscribed(self, timeout: float) -> None:
        if self._subscribed:
            return
        futures = [self.transport.subscribe(topic, self._on_message) for topic in self.subscriptions]
        for f in futures:
            try:
                f.result(timeout)
            except TimeoutError:
                raise ShadowError(504, f"subscribing to {self.prefix}/… not confirmed within {timeout} s") from None
            except Exception as exc:
                raise ShadowError(503, f"subscribing to {self.prefix}/… failed: {exc}") from None
        self._subscribed = True

    def _request(self, op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.transport.wait_connected(timeout):
            raise ShadowError(503, "not connected")
        self._ensure_subscribed(timeout)
        token = uuid.uuid4().hex  # 32 characters; IoT Core allows up to 64 bytes
        try:
            payload = json.dumps({**body, "clientToken": token}, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ShadowError(400, f"the document is not JSON-serialisable: {exc}") from None
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[token] = fut

        def _sent(f: Future[None]) -> None:
            exc = f.exception()
            if exc is not None and not fut.done():
                # too large for the link (IoT Core would answer 413 too): not sent, so no answer will come
                code = 413 if isinstance(exc, MessageTooLarge) else 503
                fut.set_exception(ShadowError(code, f"shadow {op} request not sent: {exc}"))

        try:
            self.transport.publish(f"{self.prefix}/{op}", payload).add_done_callback(_sent)
            return fut.result(timeout)
        except TimeoutError:
            raise ShadowError(504, f"no answer to shadow {op} within {timeout} s") from None
        finally:
            with self._lock:
                self._pending.pop(token, None)

    def get(self, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            doc = self._request("get", {}, timeout)
        except ShadowError as exc:
            if exc.code == 404:
                with self._lock:
                    self.version = None  # a shadow made again later starts its versions afresh
                return None
            raise
        with self._lock:  # the document is the truth now, even if it is older than a version seen before
            self.version = _version(doc)
        return doc

    def update(self, document: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return self._request("update", document, timeout)

    def on_delta(self, handler: DeltaHandler) -> None:
        self._delta_handlers.append(handler)
        self._ensure_subscribed(10.0)

    # -- callbacks (transport threads) -----------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        head, _, kind = topic.rpartition("/")
        op = head.rpartition("/")[2]
        if head.rpartition("/")[0] != self.prefix or op not in OPERATIONS:
            return
        if kind == "documents":
            return  # the previous and current documents: nothing the agent needs
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("unparseable shadow message", extra={"topic": topic})
            return
        if not isinstance(doc, dict):
            log.warning("shadow message is not a JSON object", extra={"topic": topic})
            return
        if kind == "delta" and op == "update":
            self._on_delta(topic, doc)
        elif kind in ("accepted", "rejected"):
            self._on_answer(kind, doc)

    def _on_answer(self, kind: str, doc: dict[str, Any]) -> None:
        with self._lock:
            fut = self._pending.get(str(doc.get("clientToken", "")))
            if kind == "accepted":
                self._seen(_version(doc))
        if fut is None or fut.done():
            return
        if kind == "rejected":
            code = doc.get("code")
            fut.set_exception(ShadowError(code if isinstance(code, int) else 500, str(doc.get("message", ""))))
        else:
            fut.set_result(doc)

    def _on_delta(self, topic: str, doc: dict[str, Any]) -> None:
        state, version = doc.get("state"), _version(doc)
        if not isinstance(state, dict) or version is None:
            log.warning("unparseable shadow delta", extra={"topic": topic})
            return
        with self._lock:
            stale = self.version is not None and version < self.version
            if not stale:
                self._seen(version)
        if stale:
            log.info("out-of-date shadow delta; reading the shadow again", extra={"version": version})
            self._resync()
            return
        self._hand_on(state, version)

    def _hand_on(self, state: dict[str, Any], version: int) -> None:
        for handler in list(self._delta_handlers):
            try:
                handler(state, version)
            except Exception:
                log.exception("shadow delta handler failed", extra={"topic": f"{self.prefix}/update/delta"})

    def _resync(self) -> None:
        """Read the document on a thread of its own (the answer arrives on the transport's thread, which
        must not be blocked) and hand on its delta, if any."""
        with self._lock:
            if self._resyncing:
                return
            self._resyncing = True

        def run() -> None:
            try:
                doc = self.get()
            except ShadowError as exc:
                log.warning("could not read the shadow again", extra={"error": str(exc)})
                return
            finally:
                with self._lock:
                    self._resyncing = False
            delta = ((doc or {}).get("state") or {}).get("delta")
            version = _version(doc or {})
            if isinstance(delta, dict) and delta and version is not None:
                self._hand_on(delta, version)

        threading.Thread(target=run, name="shadow-resync", daemon=True).start()

    def _seen(self, version: int | None) -> None:
        if version is not None and (self.version is None or version > self.version):
            self.version = version


def _version(doc: dict[str, Any]) -> int | None:
    version = doc.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None
