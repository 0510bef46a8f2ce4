"""MQTT 3.1.1 transport on awscrt (the AWS IoT Device SDK v2's runtime).

MQTT 3.1.1 works with AWS IoT Core, mosquitto and amqtt alike (awscrt's MQTT 5 client cannot talk to
amqtt). URLs: ``mqtt://host:1883`` (plain TCP, for local brokers) and ``mqtts://host:8883`` (TLS; with
``cert_file`` + ``key_file`` it is mutual TLS as IoT Core requires, ``ca_file`` overrides the trust store).

awscrt reconnects by itself only after a first successful connection, so the initial connect is retried
here until it succeeds or ``stop()`` is called, with exponential backoff and jitter
(``hardware.transports.backoff``: ``reconnect_min_s`` doubling to ``reconnect_max_s``, each wait uniform in
its upper half). After that awscrt reconnects on its own schedule: ``reconnect_min_s`` (at least 1 s)
doubling to ``reconnect_max_s``, without jitter, restarted once a connection has stayed up 10 s.

Size: AWS IoT Core accepts publishes up to 128 KiB; :meth:`MqttTransport.max_payload_bytes` counts the whole
PUBLISH packet (fixed header, topic, packet id) against it, and a bigger publish fails with MessageTooLarge
without being sent (IoT Core would disconnect the client).
"""

from __future__ import annotations

import functools
import logging
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from awscrt import io, mqtt

from device_agent.config import MqttSettings
from device_agent.uplink.transport import MessageHandler, MessageTooLarge, TransportError
from hardware.transports.backoff import Backoff

log = logging.getLogger(__name__)

#: AWS IoT Core's message size limit, applied to the whole PUBLISH packet
MQTT_MAX_MESSAGE_BYTES = 128 * 1024
_PUBLISH_HEADER_BYTES = 5 + 2 + 2  # fixed header (1 + up to 4 length bytes), topic length, packet id


def _check_key_permissions(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "private key is readable by group/others; chmod 600 it",
            extra={"path": str(path), "mode": oct(stat.S_IMODE(mode))},
        )


def build_tls_context(settings: MqttSettings) -> io.ClientTlsContext:
    if settings.cert_file and settings.key_file:
        for p in (settings.cert_file, settings.key_file):
            if not p.is_file():
                raise TransportError(f"mqtt: certificate/key file {p} does not exist")
        _check_key_permissions(settings.key_file)
        opts = io.TlsContextOptions.create_client_with_mtls_from_path(str(settings.cert_file), str(settings.key_file))
    elif settings.cert_file or settings.key_file:
        raise TransportError("mqtt: mutual TLS needs both cert_file and key_file")
    else:
        opts = io.TlsContextOptions()
    if settings.ca_file:
        if not settings.ca_file.is_file():
            raise TransportError(f"mqtt: CA file {settings.ca_file} does not exist")
        opts.override_default_trust_store_from_path(None, str(settings.ca_file))
    return io.ClientTlsContext(opts)


class MqttTransport:
    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise TransportError(f"mqtt: bad broker URL {settings.url!r}")
        self.settings = settings
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.client_id = client_id
        tls = build_tls_context(settings) if parts.scheme == "mqtts" else None
        self._client = mqtt.Client(None, tls)
        self._conn = mqtt.Connection(
            client=self._client,
            host_name=self.host,
            port=self.port,
            client_id=client_id,
            clean_session=True,
            keep_alive_secs=settings.keepalive_s,
            ping_timeout_ms=min(3000, settings.keepalive_s * 500),
            protocol_operation_timeout_ms=int(settings.publish_timeout_s * 1000),
            reconnect_min_timeout_secs=max(1, int(settings.reconnect_min_s)),
            reconnect_max_timeout_secs=max(1, int(settings.reconnect_max_s)),
            on_connection_interrupted=self._on_interrupted,
            on_connection_resumed=self._on_resumed,
        )
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._subs: dict[str, MessageHandler] = {}
        self._thread: threading.Thread | None = None
        self._ever_connected = False
        self.connects = 0
        self.interruptions = 0
        self.connect_attempts = 0
        self.backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, jitter=0.5)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._connect_loop, name="mqtt-connect", daemon=True)
            self._thread.start()

    def _connect_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.connect_attempts += 1
                result: dict[str, Any] = self._conn.connect().result(self.settings.connect_timeout_s + 5)
            except Exception as exc:
                delay = self.backoff.failed()
                log.info(
                    "mqtt connect failed, retrying",
                    extra={"broker": f"{self.host}:{self.port}", "error": str(exc)[:200], "retry_s": round(delay, 3)},
                )
                if self._stopping.wait(delay):
                    return
                continue
            self.backoff.succeeded()
            self._ever_connected = True
            self.connects += 1
            log.info(
                "mqtt connected",
                extra={"broker": f"{self.host}:{self.port}", "session_present": result.get("session_present")},
            )
            self._resubscribe()
            self._connected.set()
            return

    def stop(self) -> None:
        self._stopping.set()
        self._connected.clear()
        try:
            self._conn.disconnect().result(5)
        except Exception as exc:  # already down
            log.debug("mqtt disconnect: %s", exc)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _on_interrupted(self, connection: mqtt.Connection, error: Exception, **kwargs: Any) -> None:
        self.interruptions += 1
        self._connected.clear()
        log.warning("mqtt connection interrupted", extra={"error": str(error)[:200]})

    def _on_resumed(
        self, connection: mqtt.Connection, return_code: mqtt.ConnectReturnCode, session_present: bool, **kwargs: Any
    ) -> None:
        if return_code != mqtt.ConnectReturnCode.ACCEPTED:
            log.warning("mqtt reconnect refused", extra={"return_code": str(return_code)})
            return
        self.connects += 1
        log.info("mqtt connection resumed", extra={"session_present": session_present})
        if not session_present:
            threading.Thread(target=self._resubscribe_then_ready, daemon=True).start()
        else:
            self._connected.set()

    def _resubscribe_then_ready(self) -> None:
        self._resubscribe()
        self._connected.set()

    # -- messaging --------------------------------------------------------------------------------
    def max_payload_bytes(self, topic: str) -> int:
        return MQTT_MAX_MESSAGE_BYTES - _PUBLISH_HEADER_BYTES - len(topic.encode())

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        budget = self.max_payload_bytes(topic)
        if len(payload) > budget:
            out: Future[None] = Future()
            out.set_exception(MessageTooLarge(topic, len(payload), budget))
            return out
        return _acknowledged(lambda: self._conn.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE)[0], "publish to", topic)

    def subscribe(self, topic: str, handler: MessageHandler) -> Future[None]:
        self._subs[topic] = handler
        return self._subscribe_one(topic, handler)

    def _subscribe_one(self, topic: str, handler: MessageHandler) -> Future[None]:
        def _on_message(topic: str, payload: bytes, **kwargs: Any) -> None:
            try:
                handler(topic, payload)
            except Exception:
                log.exception("mqtt message handler failed", extra={"topic": topic})

        return _acknowledged(
            lambda: self._conn.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, _on_message)[0], "subscribe", topic
        )

    def _resubscribe(self) -> None:
        for topic, handler in list(self._subs.items()):
            try:
                self._subscribe_one(topic, handler).result(self.settings.publish_timeout_s)
            except Exception as exc:
                log.warning("mqtt resubscribe failed", extra={"topic": topic, "error": str(exc)[:200]})


def _settle(out: Future[None], verb: str, target: str, inner: Future[Any]) -> None:
    """Resolve ``out`` from awscrt's future (the error text is built only on failure)."""
    exc = inner.exception()
    if exc is not None:
        out.set_exception(TransportError(f"{verb} {target} not acknowledged: {exc}"))
    else:
        out.set_result(None)


def _acknowledged(request: Callable[[], Future[Any]], verb: str, target: str) -> Future[None]:
    """Run an awscrt request and give a future that resolves on its acknowledgement or fails with a
    TransportError naming what was asked (``verb target``)."""
    out: Future[None] = Future()
    try:
        inner = request()
    except Exception as exc:
        out.set_exception(TransportError(f"{verb} {target} failed: {exc}"))
        return out
    inner.add_done_callback(functools.partial(_settle, out, verb, target))
    return out
