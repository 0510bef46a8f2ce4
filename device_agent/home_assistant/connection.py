"""The connection to Home Assistant's local broker: awscrt's MQTT 3.1.1 client (the library of the AWS uplink),
a connection of its own beside the uplink, with a retained last will ("offline" on the agent's status topic).

The first connect is retried here with the project's :class:`~hardware.transports.backoff.Backoff`
(``reconnect_min_s`` doubling to ``reconnect_max_s``, equal jitter) until it succeeds or :meth:`stop`;
after that awscrt reconnects by itself. Every (re)connection bumps :attr:`generation`, which tells the state
publisher to send the status, the discovery configs and the last states again (the broker published the will
while the connection was down; a clean session lost the subscription, which is renewed here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from awscrt import mqtt

from device_agent.config import HomeAssistantSettings, MqttSettings
from device_agent.uplink.mqtt_transport import build_tls_context
from hardware.transports.backoff import Backoff

log = logging.getLogger(__name__)


class LocalBroker:
    def __init__(
        self,
        settings: HomeAssistantSettings,
        client_id: str,
        will_topic: str,
        will_payload: bytes,
        subscribe_topic: str,
        on_message: Callable[[str, bytes], None],
        on_change: Callable[[], None],
    ) -> None:
        parts = urlsplit(settings.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.settings = settings
        self._subscribe_topic = subscribe_topic
        self._on_message_cb = on_message
        self._on_change = on_change
        tls = None
        if parts.scheme == "mqtts":  # the uplink's TLS context builder, fed the same three paths
            tls = build_tls_context(
                MqttSettings(ca_file=settings.ca_file, cert_file=settings.cert_file, key_file=settings.key_file)
            )
        self._client = mqtt.Client(None, tls)
        self._conn = mqtt.Connection(
            client=self._client,
            host_name=self.host,
            port=self.port,
            client_id=client_id,
            clean_session=True,
            keep_alive_secs=settings.keepalive_s,
            ping_timeout_ms=min(3000, settings.keepalive_s * 500),
            protocol_operation_timeout_ms=int(max(settings.connect_timeout_s, 5.0) * 1000),
            reconnect_min_timeout_secs=max(1, int(settings.reconnect_min_s)),
            reconnect_max_timeout_secs=max(1, int(settings.reconnect_max_s)),
            will=mqtt.Will(will_topic, mqtt.QoS.AT_LEAST_ONCE, will_payload, True),
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password is not None else None,
            on_connection_interrupted=self._on_interrupted,
            on_connection_resumed=self._on_resumed,
            disable_metrics=True,  # no SDK suffix on the username: a local broker checks it as written
        )
        self.backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, jitter=0.5)
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 0
        self.connect_attempts = 0

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._connect_loop, name="ha-mqtt-connect", daemon=True)
            self._thread.start()

    def _connect_loop(self) -> None:
        while not self._stopping.is_set():
            self.connect_attempts += 1
            try:
                self._conn.connect().result(self.settings.connect_timeout_s + 5)
            except Exception as exc:
                delay = self.backoff.failed()
                log.info(
                    "home assistant broker: connect failed, retrying",
                    extra={"broker": self.broker, "error": str(exc)[:200], "retry_s": round(delay, 3)},
                )
                if self._stopping.wait(delay):
                    return
                continue
            self.backoff.succeeded()
            log.info("home assistant broker: connected", extra={"broker": self.broker})
            self._ready()
            return

    def _ready(self) -> None:
        try:
            self._conn.subscribe(self._subscribe_topic, mqtt.QoS.AT_LEAST_ONCE, self._deliver)[0].result(
                self.settings.connect_timeout_s + 5
            )
        except Exception as exc:
            log.warning("home assistant broker: subscribe failed", extra={"topic": self._subscribe_topic,
                                                                          "error": str(exc)[:200]})  # fmt: skip
        self.generation += 1
        self._connected.set()
        self._on_change()

    def _deliver(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        try:
            self._on_message_cb(topic, payload)
        except Exception:
            log.exception("home assistant broker: message handler failed", extra={"topic": topic})

    def _on_interrupted(self, connection: mqtt.Connection, error: Exception, **kwargs: Any) -> None:
        self._connected.clear()
        log.warning("home assistant broker: connection lost", extra={"broker": self.broker, "error": str(error)[:200]})

    def _on_resumed(
        self, connection: mqtt.Connection, return_code: mqtt.ConnectReturnCode, session_present: bool, **kwargs: Any
    ) -> None:
        if return_code != mqtt.ConnectReturnCode.ACCEPTED:
            log.warning("home assistant broker: reconnect refused", extra={"return_code": str(return_code)})
            return
        log.info("home assistant broker: reconnected", extra={"broker": self.broker})
        # not on awscrt's event-loop thread: the subscribe waits for its acknowledgement
        threading.Thread(target=self._ready, name="ha-mqtt-ready", daemon=True).start()

    def publish(self, topic: str, payload: bytes, retain: bool) -> Future[Any]:
        future: Future[Any] = self._conn.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE, retain)[0]
        return future

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._connected.clear()
        try:
            self._conn.disconnect().result(timeout_s)
        except Exception as exc:  # never connected, or already down
            log.debug("home assistant broker: disconnect: %s", exc)
        if self._thread is not None:  # a daemon: a connect attempt still hanging on a silent host is left behind
            self._thread.join(timeout=min(timeout_s, 2.0))
