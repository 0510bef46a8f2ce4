"""A local stand-in for the Greengrass nucleus' IPC server, for development and tests.

It listens on a Unix socket and speaks the event-stream RPC protocol of Greengrass IPC (see ``wire``), so
the unmodified ``GreengrassCoreIPCClientV2`` (and anything built on it) connects to it as to a real
nucleus. What it implements:

* **connect**: ``:version`` 0.1.0 and ``{"authToken": <SVCUID>}``; an unknown token gets a CONNECT_ACK
  without the accepted flag and the connection is closed; PING is answered.
* **IoT Core (mqttproxy)**: PublishToIoTCore is recorded (:attr:`NucleusEmulator.published`, in order)
  and optionally forwarded to a real MQTT broker; SubscribeToIoTCore receives what
  :meth:`NucleusEmulator.deliver_from_cloud` injects, what components publish to "IoT Core" (as the
  cloud broker echoes it), or, when forwarding, what the broker delivers.
* **IoT Core's shadow service** (when not forwarding): a PublishToIoTCore to a shadow request topic
  (``$aws/things/<thing>/shadow[/name/<shadow>]/get|update|delete``) is answered on its ``accepted`` /
  ``rejected`` / ``delta`` / ``documents`` topics as IoT Core does (see ``cloud_shadow``).
* **local pub/sub**: PublishToTopic / SubscribeToTopic with MQTT wildcards and receive modes.
* **ShadowManager**: Get/Update/DeleteThingShadow with its semantics (see ``shadows``); updates publish
  ``…/update/delta|documents|accepted`` (or ``…/rejected``) on local pub/sub as binary JSON messages.
* **configuration**: GetConfiguration, UpdateConfiguration, SubscribeToConfigurationUpdate,
  SubscribeToValidateConfigurationUpdates (accepted, never fires), UpdateState.
* **authorization**: every IoT Core, pub/sub and shadow request is checked against the calling
  component's ``accessControl`` (from its recipe's DefaultConfiguration; classic substitutes
  ``{iot:thingName}`` as ``interpolateComponentConfiguration`` does, lite v2.6.0 does not; each flavour's
  own resource matching, see ``acl``); refusals are UnauthorizedError and are recorded in
  :attr:`NucleusEmulator.denials`.

* **flavours** (``flavour="classic" | "lite"``, see ``flavours``): which operations are served, how errors
  are written, the IPC frame limit, how configuration and lifecycles are interpolated.
* **deployments** (:meth:`NucleusEmulator.deploy`, :meth:`NucleusEmulator.deploy_build`, see ``deployment``):
  recipes and artifacts laid out under ``root``, install and run steps run as processes with the nucleus'
  environment, a component restarted only when its interpolated lifecycle changed.

Module layout: ``streams`` (per-connection objects), ``core`` (shared state, authorization), ``connection``
(socket server and dispatch), ``ops_iot`` / ``ops_pubsub`` / ``ops_shadow`` / ``ops_config`` (operations),
``flavours``, ``resolve`` (recipe → lifecycle), ``deployment``, ``processes``; this module assembles them.

Operations it does not implement are answered with ServiceError. Responses to a request always precede
the stream events the request causes (as the nucleus' ordered executors make it in practice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from devkit.nucleus.acl import AccessControl
from devkit.nucleus.cloud_shadow import CloudShadowService, cloud_order
from devkit.nucleus.config_store import ConfigStore
from devkit.nucleus.connection import ConnectionServer
from devkit.nucleus.core import (
    SHADOW_MANAGER_COMPONENT,
    SOCKET_ENV,
    TOKEN_ENV,
    Denial,
    Handler,
    IpcError,
    PublishedMessage,
    log,
)
from devkit.nucleus.deployment import Deployments
from devkit.nucleus.flavours import Flavour, rules_for
from devkit.nucleus.ops_config import ConfigurationOps
from devkit.nucleus.ops_iot import IoTCoreOps
from devkit.nucleus.ops_shadow import ShadowOps
from devkit.nucleus.recipe import (
    component_name,
    default_configuration,
    load_recipe,
)
from devkit.nucleus.shadows import DEFAULT_MAX_DOCUMENT_BYTES, ShadowRequestError, ShadowStore
from devkit.nucleus.streams import Connection

__all__ = ["SOCKET_ENV", "TOKEN_ENV", "Denial", "IpcError", "NucleusEmulator", "PublishedMessage", "short_socket_path"]

UNIX_PATH_MAX = 107


class NucleusEmulator(ConnectionServer, IoTCoreOps, ShadowOps, ConfigurationOps, Deployments):
    """The emulated nucleus; see the module docstring. Thread-safe; use as a context manager or start/stop."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        thing_name: str,
        recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        component: str | None = None,
        svcuid: str | None = None,
        configuration: Mapping[str, Any] | None = None,
        forward_mqtt: str | None = None,
        max_shadow_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        flavour: Flavour = "classic",
        max_ipc_message_bytes: int | None = None,
        root: str | os.PathLike[str] | None = None,
        region: str = "us-east-1",
        cloud_ack_delay_s: float = 0.0,
    ) -> None:
        """``flavour`` picks the nucleus answered like (see ``flavours``); ``max_ipc_message_bytes`` closes a
        connection that sends a bigger frame (None: the flavour's limit, none on classic); ``root`` is the
        Greengrass root folder deployments lay components out in (see :meth:`deploy`); ``cloud_ack_delay_s``:
        how long lite's iotcored keeps a QoS 1 publish before the emulated cloud acknowledges it (see ``ops_iot``)."""
        self.rules = rules_for(flavour)
        self.flavour = self.rules.name
        self.max_ipc_message_bytes = (
            max_ipc_message_bytes if max_ipc_message_bytes is not None else self.rules.max_ipc_message_bytes
        )
        self.oversized_frames = 0
        self.max_frame_bytes = 0  # the longest IPC frame received so far (any connection)
        self.region = region
        self._init_deployments(Path(root) if root is not None else None)
        self.socket_path = str(socket_path)
        if len(os.fsencode(self.socket_path)) > UNIX_PATH_MAX:
            raise ValueError(f"socket path is longer than {UNIX_PATH_MAX} bytes: {self.socket_path}")
        self.thing_name = thing_name
        self.forward_url = forward_mqtt
        self.configs = ConfigStore()
        self.shadows = ShadowStore(max_shadow_bytes)
        self.cloud_shadow = CloudShadowService(self.shadows)  # IoT Core's shadow topics, when not forwarding
        self._operations: list[tuple[str, str]] = []
        self._tokens: dict[str, str] = {}
        if recipe is not None:
            data = load_recipe(recipe if isinstance(recipe, Mapping) else Path(recipe))
            name = component or component_name(data)
            conf = self._stored_configuration(default_configuration(data))
        elif component is not None:
            name, conf = component, {}
        else:
            raise ValueError("give a recipe or a component name")
        if configuration is not None:
            conf = self._stored_configuration(dict(configuration))
        self.component = name
        self.svcuid = svcuid or secrets.token_urlsafe(24)
        self._tokens[self.svcuid] = name
        self.configs.set(name, conf, time.time())
        AccessControl.from_configuration(conf)  # fail early on a malformed accessControl

        self._published: list[PublishedMessage] = []
        self._denials: list[Denial] = []
        self._states: dict[str, str] = {}
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[Connection] = set()
        self._forwarder: Any = None
        self._stream_counts: dict[tuple[str, str], int] = {}
        self._shadow_generation = 0
        self._forward_subs: dict[str, Future[None]] = {}
        self.connects = 0
        self.refused = 0
        self._init_unacked_store(cloud_ack_delay_s)  # lite: iotcored's store of unacknowledged publishes
        self._handlers: dict[str, Handler] = {
            "PublishToIoTCore": self._op_publish_to_iot_core,
            "SubscribeToIoTCore": self._op_subscribe_to_iot_core,
            "PublishToTopic": self._op_publish_to_topic,
            "SubscribeToTopic": self._op_subscribe_to_topic,
            "GetThingShadow": self._op_get_thing_shadow,
            "UpdateThingShadow": self._op_update_thing_shadow,
            "DeleteThingShadow": self._op_delete_thing_shadow,
            "ListNamedShadowsForThing": self._op_list_named_shadows,
            "GetConfiguration": self._op_get_configuration,
            "UpdateConfiguration": self._op_update_configuration,
            "SubscribeToConfigurationUpdate": self._op_subscribe_to_configuration_update,
            "SubscribeToValidateConfigurationUpdates": self._op_subscribe_to_validate,
            "UpdateState": self._op_update_state,
        }

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> NucleusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NucleusEmulator:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="gg-nucleus-emulator", daemon=True)
        self._thread.start()
        if self.forward_url:
            self._start_forwarder(self.forward_url)
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        log.info("nucleus emulator listening", extra={"socket": self.socket_path, "component": self.component})
        return self

    def stop(self) -> None:
        self._stop_components()
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None
        self._thread = None
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def restart(self, down_s: float = 0.0) -> None:
        """Drop every connection and the listening socket, stay down ``down_s`` seconds (a component that
        connects then finds no socket), then listen again (a nucleus restart).

        State (shadows, configuration, records) is kept. Tokens: classic keeps them (a classic nucleus restart
        restarts its components anyway); lite forgets every SVCUID it issued, as a restarted ggipcd does (it
        keeps them in memory only, ``modules/ggipcd/src/ipc_components.c``): a running component's token is
        refused from then on ("Requested svcuid not registered") until :meth:`issue_svcuid` gives it a new one
        (on lite, a component restart)."""
        loop = self._require_loop()
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        if self.flavour == "lite":
            self._call(self._tokens.clear)
        if down_s > 0:
            time.sleep(down_s)
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)

    def issue_svcuid(self, component: str | None = None) -> str:
        """A new SVCUID for ``component`` (default: the emulator's own), as the nucleus gives a component
        when it starts it; the component's other tokens stay valid. Returns it (the primary component's also
        becomes :attr:`svcuid`, so :meth:`env` hands it out)."""
        name = component or self.component
        token = secrets.token_urlsafe(24)

        def _add() -> None:
            self._tokens[token] = name

        self._call(_add)
        if name == self.component:
            self.svcuid = token
        return token

    def env(self, svcuid: str | None = None) -> dict[str, str]:
        """The variables a component process gets from the nucleus (``svcuid``: another component's token)."""
        return {
            TOKEN_ENV: svcuid or self.svcuid,
            SOCKET_ENV: self.socket_path,
            "AWS_IOT_THING_NAME": self.thing_name,
            "AWS_REGION": self.region,
        }

    def add_component(self, name: str, configuration: Mapping[str, Any] | None = None) -> str:
        """Register another component (e.g. a test peer); returns its SVCUID."""
        token = secrets.token_urlsafe(24)
        conf = self._stored_configuration(dict(configuration or {}))
        AccessControl.from_configuration(conf)

        def _add() -> None:
            self._tokens[token] = name
            self.configs.set(name, conf, time.time())

        self._call(_add)
        return token

    # -- inspection (any thread) ------------------------------------------------------------------
    @property
    def published(self) -> list[PublishedMessage]:
        with self._cond:
            return list(self._published)

    @property
    def denials(self) -> list[Denial]:
        with self._cond:
            return list(self._denials)

    @property
    def operations(self) -> list[tuple[str, str]]:
        """Every IPC operation requested so far, in order: (component, operation without the namespace)."""
        with self._cond:
            return list(self._operations)

    def clear_published(self) -> None:
        with self._cond:
            self._published.clear()

    def wait_for(self, predicate: Callable[[list[PublishedMessage]], bool], timeout: float) -> bool:
        """Block until ``predicate(published)`` is true (re-checked on every new publish) or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._published)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_connections(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``connects`` (accepted connections so far) reaches ``count``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connects < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def subscriptions(self, kind: str, topic_filter: str = "") -> int:
        """Open streams of ``kind`` ("iot", "pubsub", "config", "validate") on ``topic_filter`` (for config:
        the key path joined with "/")."""
        with self._cond:
            return self._stream_counts.get((kind, topic_filter), 0)

    def wait_for_subscriptions(
        self, kind: str, topic_filter: str = "", count: int = 1, timeout: float = 10.0, *, exactly: bool = False
    ) -> bool:
        """Block until at least (or, with ``exactly``, precisely) ``count`` such streams are open."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                n = self._stream_counts.get((kind, topic_filter), 0)
                if n == count or (n > count and not exactly):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def wait_for_shadow(
        self,
        predicate: Callable[[dict[str, Any] | None], bool],
        shadow_name: str | None = None,
        thing_name: str | None = None,
        timeout: float = 10.0,
    ) -> bool:
        """Block until ``predicate(document or None)`` holds for the shadow (re-checked after every update)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._shadow_generation
            if predicate(self.shadow(thing_name, shadow_name)):  # not under the lock: the loop thread takes it
                return True
            with self._cond:
                while self._shadow_generation == seen:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)

    def forwarding_ready(self, topic_filter: str, timeout: float = 10.0) -> bool:
        """With ``forward_mqtt``: whether the broker accepted the subscription made for ``topic_filter``."""
        fut = self._call(self._forward_subs.get, topic_filter)
        if fut is None:
            return False
        try:
            fut.result(timeout)
        except Exception:
            return False
        return True

    def component_state(self, component: str | None = None) -> str | None:
        with self._cond:
            return self._states.get(component or self.component)

    # -- driving the emulated device from outside (any thread) ------------------------------------
    def publish_local(self, topic: str, payload: bytes | Mapping[str, Any], source: str = "external") -> None:
        """Publish on local pub/sub as component ``source`` (bytes → binary message, mapping → JSON)."""
        self._call(self._deliver_local, topic, payload, source)

    def shadow(self, thing_name: str | None = None, shadow_name: str | None = None) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                return self.shadows.get(thing_name or self.thing_name, shadow_name)
            except ShadowRequestError:
                return None

        return self._call(_get)

    def update_shadow(
        self, document: Mapping[str, Any], shadow_name: str | None = None, thing_name: str | None = None
    ) -> dict[str, Any]:
        """Update a shadow as the cloud would (no authorization): publishes ShadowManager's local events and,
        when not forwarding, IoT Core's shadow messages to SubscribeToIoTCore subscribers."""

        def _update() -> dict[str, Any]:
            thing = thing_name or self.thing_name
            result = self.shadows.update(thing, shadow_name, json.dumps(document).encode())
            self._shadow_changed()
            for topic, payload in result.events:
                self._deliver_local(topic, payload, SHADOW_MANAGER_COMPONENT)
            if self._forwarder is None:  # and IoT Core's shadow topics, to SubscribeToIoTCore subscribers
                for topic, payload in cloud_order(result):
                    self._deliver_iot(topic, payload)
            return result.response

        return self._call(_update)

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        return self._call(self.configs.tree, component or self.component)

    def update_configuration(
        self, value_to_merge: Mapping[str, Any], key_path: Sequence[str] = (), component: str | None = None
    ) -> list[tuple[str, ...]]:
        """Merge configuration as a deployment would; notifies SubscribeToConfigurationUpdate streams."""
        target = component or self.component
        return self._call(self._merge_config, target, tuple(key_path), dict(value_to_merge), time.time())


def short_socket_path(prefix: str = "gg") -> str:
    """A fresh socket path short enough for AF_UNIX (pytest's tmp paths often are not)."""
    import shutil
    import tempfile

    for base in (None, "/tmp"):  # noqa: S108 - a private mkdtemp folder; only if TMPDIR is too long
        directory = tempfile.mkdtemp(prefix=prefix, dir=base)
        path = os.path.join(directory, "ipc.socket")
        if len(os.fsencode(path)) <= UNIX_PATH_MAX:
            return path
        shutil.rmtree(directory, ignore_errors=True)
    raise OSError("cannot make a socket path short enough for AF_UNIX")
