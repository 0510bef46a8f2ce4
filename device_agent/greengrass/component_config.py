"""The component's configuration, read through IPC: GetConfiguration + SubscribeToConfigurationUpdate.

Under Greengrass the Run lifecycle already maps the configuration onto ``BATTWIN_*`` environment
variables (see ``recipes/com.battwin.Agent.yaml``), so the agent starts with it; a deployment that changes
a value used in the lifecycle restarts the component. This class is for reacting *without* a restart:
read the live configuration, and be told when a deployment (or ``UpdateConfiguration``) changes it::

    config = ComponentConfig()                     # this component, whole configuration
    settings = agent_overrides(config.get())       # AgentConfig-shaped dict (accessControl removed)
    config.on_update(lambda conf, path: ...)       # conf: the configuration under key_path, re-read

Another component's configuration can be read too (``ComponentConfig("com.battwin.SohModel")``).
The nucleus reports one update event per changed leaf; each is delivered with the configuration as it
is when the event is handled, so a burst of events may show the same final configuration more than once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from device_agent.greengrass.connection import ClientProvider, IpcUnavailable, as_provider
from device_agent.greengrass.stream_subscription import StreamSubscription

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)

#: configuration keys that belong to Greengrass, not to the agent
GREENGRASS_KEYS = frozenset({"accessControl"})

UpdateCallback = Callable[[dict[str, Any], list[str]], None]


class ConfigurationError(RuntimeError):
    """Reading or watching the configuration failed (not connected, refused, timed out)."""


def agent_overrides(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The component configuration without Greengrass' own keys: what ``AgentConfig`` validates."""
    return {k: v for k, v in configuration.items() if k not in GREENGRASS_KEYS}


class ComponentConfig:
    """See the module docstring. ``component_name`` None = the calling component; ``key_path`` selects a
    subtree (``["health"]``). ``client``: None (a connection from the environment, owned and closed by
    :meth:`close`), an :class:`~device_agent.greengrass.connection.IpcConnection` to share (e.g. the
    transport's ``connection``), or a ready ``GreengrassCoreIPCClientV2``."""

    def __init__(
        self,
        component_name: str | None = None,
        key_path: Sequence[str] = (),
        client: ClientProvider | GreengrassCoreIPCClientV2 | None = None,
    ) -> None:
        self.component_name = component_name
        self.key_path = list(key_path)
        provider, owned = as_provider(client)
        self.connection: ClientProvider = provider
        self._updates: StreamSubscription[UpdateCallback] = StreamSubscription(
            provider, owned, "configuration update", self._open_stream
        )
        provider.start()

    def close(self) -> None:
        self._updates.close()

    def get(self, key_path: Sequence[str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The configuration at ``key_path`` (default: this object's); a leaf comes as ``{name: value}``."""
        deadline = time.monotonic() + timeout
        if not self.connection.wait_connected(timeout):
            raise ConfigurationError("not connected to the Greengrass nucleus")
        try:
            client = self.connection.client()
            future = client.get_configuration_async(
                component_name=self.component_name,
                key_path=list(self.key_path if key_path is None else key_path),
            )
            response = future.result(max(0.0, deadline - time.monotonic()))
        except (concurrent.futures.TimeoutError, TimeoutError):
            raise ConfigurationError("no answer to GetConfiguration in time") from None
        except IpcUnavailable as exc:
            raise ConfigurationError(str(exc)) from None
        except Exception as exc:
            message = str(getattr(exc, "message", None) or exc)
            raise ConfigurationError(f"GetConfiguration failed: {type(exc).__name__}: {message}") from None
        value = response.value
        return dict(value) if isinstance(value, Mapping) else {}

    def on_update(self, callback: UpdateCallback, timeout: float = 10.0) -> None:
        """Call ``callback(configuration, changed_key_path)`` after every change under ``key_path``. If
        connected, the subscription is made now and a failure raises ConfigurationError (the callback is
        then not registered); otherwise it is made when the connection comes up."""
        try:
            self._updates.add(callback, timeout)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc!s}"
            raise ConfigurationError(f"SubscribeToConfigurationUpdate failed: {detail}") from None

    def _open_stream(self, client: GreengrassCoreIPCClientV2) -> tuple[concurrent.futures.Future[Any], Any]:
        response, operation = client.subscribe_to_configuration_update_async(
            component_name=self.component_name,
            key_path=list(self.key_path),
            on_stream_event=self._on_event,
            on_stream_error=self._on_stream_error,
        )
        return response, operation

    def _on_stream_error(self, error: Exception) -> bool:
        log.warning("configuration update stream error", extra={"error": str(error)[:300]})
        return False

    def _on_event(self, event: Any) -> None:
        update = getattr(event, "configuration_update_event", None)
        changed = list(getattr(update, "key_path", None) or [])
        try:
            configuration = self.get()
        except ConfigurationError as exc:
            log.warning("could not re-read the configuration after an update", extra={"error": str(exc)[:300]})
            return
        for callback in self._updates.listeners():
            try:
                callback(configuration, changed)
            except Exception:
                log.exception("configuration update callback failed", extra={"key_path": "/".join(changed)})
