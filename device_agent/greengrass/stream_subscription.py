"""One IPC stream subscription (configuration updates, shadow deltas …) kept open on a reconnecting
connection (:mod:`device_agent.greengrass.connection`) and shared by its listeners."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from device_agent.greengrass.connection import ClientProvider, IpcUnavailable

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)


def close_subscriptions(operations: list[Any], provider: ClientProvider, owned: bool, what: str) -> None:
    """Close streaming operations (subscriptions), then the connection if this object owns it."""
    for op in operations:
        try:
            op.close()
        except Exception as exc:
            log.debug("closing the %s subscription failed: %s", what, exc)
    if owned:
        provider.stop()


L = TypeVar("L")
#: opens the stream on a client: (the response future, the streaming operation)
OpenStream = Callable[["GreengrassCoreIPCClientV2"], tuple["concurrent.futures.Future[Any]", Any]]


class StreamSubscription(Generic[L]):
    """One IPC stream subscription shared by listeners, kept on a (reconnecting) connection.

    The stream is opened when the first listener is added while connected, or when the connection comes
    up, and opened again on every new connection (the old streams went with the old one). ``open_stream``
    opens it on a client; ``what`` names it in logs. The owner delivers stream events to
    :meth:`listeners` and calls :meth:`close`.
    """

    def __init__(
        self,
        connection: ClientProvider,
        owned: bool,
        what: str,
        open_stream: OpenStream,
        log_extra: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self._owned = owned
        self._what = what
        self._open_stream = open_stream
        self._log_extra = dict(log_extra or {})
        self._lock = threading.Lock()
        self._listeners: list[L] = []
        self._subscribed_on: object | None = None
        self._operations: list[Any] = []
        connection.add_connect_callback(self._on_connect)

    def listeners(self) -> list[L]:
        with self._lock:
            return list(self._listeners)

    def add(self, listener: L, timeout: float) -> None:
        """Register ``listener``. If connected, the stream is opened now (if not open yet) and a failure
        raises the IPC exception, with the listener not registered; otherwise it opens on connection."""
        with self._lock:
            self._listeners.append(listener)
        try:
            client = self.connection.client()
        except IpcUnavailable:
            return  # opened when the connection comes up
        future = self._subscribe(client)
        if future is None:
            return
        try:
            future.result(timeout)
        except Exception:
            with self._lock:
                self._listeners.remove(listener)
                if self._subscribed_on is client:
                    self._subscribed_on = None  # not open: the next add or reconnection tries again
            raise

    def close(self) -> None:
        """Close the streams, then the connection if the owner owns it."""
        with self._lock:
            operations, self._operations = self._operations, []
        close_subscriptions(operations, self.connection, self._owned, self._what)

    def _on_connect(self, client: GreengrassCoreIPCClientV2) -> None:
        with self._lock:
            self._operations = []
        future = self._subscribe(client)
        if future is not None:
            future.add_done_callback(self._log_failure)

    def _log_failure(self, future: concurrent.futures.Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error(
                "subscribing to the %s stream failed",
                self._what,
                extra={**self._log_extra, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )

    def _subscribe(self, client: GreengrassCoreIPCClientV2) -> concurrent.futures.Future[Any] | None:
        """Open the stream on ``client`` unless already done (or nobody listens); the response future."""
        with self._lock:
            if not self._listeners or self._subscribed_on is client:
                return None
            self._subscribed_on = client
        try:
            response, operation = self._open_stream(client)
        except Exception as exc:
            failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
            failed.set_exception(exc)
            return failed
        with self._lock:
            self._operations.append(operation)
        return response
