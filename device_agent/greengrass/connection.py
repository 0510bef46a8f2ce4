"""One IPC connection to the Greengrass nucleus, kept up in the background and shared.

:class:`IpcConnection` connects with the unmodified ``GreengrassCoreIPCClientV2`` (socket and token from
``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`` and ``SVCUID``, which the nucleus sets for every
component), notices when the connection drops (the nucleus restarted, the socket broke) and connects again
with exponential backoff and jitter (``hardware.transports.backoff``: 0.5 s doubling to 60 s, each wait
uniform in its upper half). A connection that drops again within ``healthy_after_s`` does not restart the
schedule, so a nucleus that closes every connection (lite's ggipcd does so on a frame over its limit) sees
a handful of attempts a minute, not hundreds a second. Users register ``on_connect`` callbacks to
(re)establish their subscriptions on every new connection. :class:`StaticConnection` wraps a client
someone else made (no reconnects).

A failed attempt is one of two kinds. The nucleus is not there (no socket file, connection refused, a
timeout): it is down or restarting, and the connection keeps backing off for as long as it takes. Or the
socket answered and refused our token (the classic nucleus answers CONNECT without "accepted", lite's ggipcd
closes the socket: "Client failed authentication: invalid svcuid"). Lite's ggipcd keeps the SVCUIDs it
issued in memory only, so after it restarts a running component's token is refused for good and only a
new process gets a new one. After ``stale_token_refusals`` consecutive refusals (3) spanning at least
``stale_token_after_s`` (30 s) with no successful connection, the connection gives up: it logs why, stops
trying, sets :attr:`IpcConnection.fatal` and calls the ``add_fatal_callback`` callbacks; the agent then
stops cleanly and exits non-zero so that the nucleus restarts it (lite: the unit's Restart=on-failure;
classic: a component that exits with an error is restarted) with a fresh SVCUID.

Stream events run on a single-threaded executor, so a subscriber sees its events in order; a callback may
make synchronous IPC calls (responses are completed on awscrt's event-loop thread, not the executor).
The SVCUID is never logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from hardware.transports.backoff import Backoff

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

log = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"  # noqa: S105 - the name of the variable, not a secret

ConnectCallback = Callable[["GreengrassCoreIPCClientV2"], None]
FatalCallback = Callable[[str], None]
#: awscrt error names for "nothing listens there" (the nucleus is down or restarting)
_UNREACHABLE = ("AWS_ERROR_FILE_INVALID_PATH", "AWS_IO_SOCKET_CONNECTION_REFUSED", "AWS_IO_SOCKET_TIMEOUT")


def token_refused(exc: BaseException) -> bool:
    """Whether a failed connect means "the nucleus answered and refused our token" (as opposed to "nothing
    listens on the socket"): the classic nucleus' CONNECT_ACK without "accepted" (AccessDeniedError), or the
    socket closed during the handshake (lite's ggipcd on an unknown SVCUID)."""
    if type(exc).__name__ == "AccessDeniedError":
        return True
    text = f"{getattr(exc, 'name', '')} {exc}"
    if any(name in text for name in _UNREACHABLE):
        return False
    return "AWS_IO_SOCKET_CLOSED" in text


class IpcUnavailable(RuntimeError):
    """No IPC connection: not running under Greengrass, or the nucleus is not reachable (now)."""


def running_under_greengrass() -> bool:
    return bool(os.environ.get(SOCKET_ENV)) and bool(os.environ.get(TOKEN_ENV))


class ClientProvider(Protocol):
    """What the IPC transport, shadow client and configuration reader need from a connection."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def client(self) -> GreengrassCoreIPCClientV2:
        """The current client; raises IpcUnavailable if not connected."""

    def add_connect_callback(self, callback: ConnectCallback) -> None:
        """Call ``callback(client)`` on every (re)connection, and now if already connected."""


def _run_callbacks(callbacks: list[ConnectCallback], client: GreengrassCoreIPCClientV2) -> None:
    for cb in callbacks:
        try:
            cb(client)
        except Exception:
            log.exception("IPC on-connect callback failed")


class StaticConnection:
    """A client made elsewhere, used as is: no reconnection, not closed by :meth:`stop`."""

    def __init__(self, client: GreengrassCoreIPCClientV2) -> None:
        self._client = client

    @property
    def connected(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_connected(self, timeout: float) -> bool:
        return True

    def client(self) -> GreengrassCoreIPCClientV2:
        return self._client

    def add_connect_callback(self, callback: ConnectCallback) -> None:
        _run_callbacks([callback], self._client)


class IpcConnection:
    """A self-healing connection to the nucleus (see the module docstring)."""

    def __init__(
        self,
        socket_path: str | None = None,
        svcuid: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 60.0,
        healthy_after_s: float = 30.0,
        stale_token_refusals: int = 3,
        stale_token_after_s: float = 30.0,
    ) -> None:
        self._socket_path = socket_path or os.environ.get(SOCKET_ENV, "")
        self._token = svcuid or os.environ.get(TOKEN_ENV, "")
        if not self._socket_path or not self._token:
            raise IpcUnavailable(f"not running under Greengrass: {SOCKET_ENV} and {TOKEN_ENV} must be set")
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s, jitter=0.5, healthy_after_s=healthy_after_s)
        self._lock = threading.Lock()
        self._client: GreengrassCoreIPCClientV2 | None = None
        self._generation = 0
        self._callbacks: list[ConnectCallback] = []
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.disconnects = 0
        self.connect_attempts = 0
        self.stale_token_refusals = stale_token_refusals
        self.stale_token_after_s = stale_token_after_s
        self.token_refusals = 0  # consecutive: since the last successful connection
        self._first_refusal: float | None = None
        self.fatal: str | None = None
        self._fatal_callbacks: list[FatalCallback] = []

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="gg-ipc-connect", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.connect_timeout_s + 5)
        with self._lock:
            client, self._client = self._client, None
            self._connected.clear()
        if client is not None:
            _close_client(client)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def client(self) -> GreengrassCoreIPCClientV2:
        with self._lock:
            client = self._client
        if client is None or not self._connected.is_set():
            raise IpcUnavailable("not connected to the Greengrass nucleus")
        return client

    def add_connect_callback(self, callback: ConnectCallback) -> None:
        with self._lock:
            self._callbacks.append(callback)
            client = self._client if self._connected.is_set() else None
        if client is not None:
            _run_callbacks([callback], client)

    def add_fatal_callback(self, callback: FatalCallback) -> None:
        """Call ``callback(reason)`` when the connection gives up (the token is refused for good); at once if
        it already has."""
        with self._lock:
            self._fatal_callbacks.append(callback)
            reason = self.fatal
        if reason is not None:
            callback(reason)

    def _token_refused(self) -> bool:
        """Count one token refusal; True when the connection must give up (see the module docstring)."""
        now = time.monotonic()
        self.token_refusals += 1
        if self._first_refusal is None:
            self._first_refusal = now
        return (
            self.token_refusals >= self.stale_token_refusals and now - self._first_refusal >= self.stale_token_after_s
        )

    def _give_up(self) -> None:
        since = time.monotonic() - (self._first_refusal or time.monotonic())
        reason = (
            f"the nucleus refused this component's IPC token (SVCUID) {self.token_refusals} times in a row over "
            f"{since:.0f} s (its IPC server restarted and forgot it); a new token comes only with a restart"
        )
        log.error(
            "IPC token refused for good; giving up so that the nucleus restarts the component with a new SVCUID",
            extra={"socket": self._socket_path, "refusals": self.token_refusals, "over_s": round(since, 1)},
        )
        with self._lock:
            self.fatal = reason
            callbacks = list(self._fatal_callbacks)
        for cb in callbacks:
            try:
                cb(reason)
            except Exception:
                log.exception("IPC fatal callback failed")

    # -- the connect loop -------------------------------------------------------------------------
    def _run(self) -> None:
        was_connected = False
        while not self._stopping.is_set():
            if self._connected.is_set():
                self._wake.wait()
                self._wake.clear()
                continue
            with self._lock:
                stale, self._client = self._client, None
            if stale is not None:
                _close_client(stale)
            if was_connected:  # the connection dropped: wait before the next attempt (never at once)
                was_connected = False
                delay = self.backoff.failed()
                log.info("IPC reconnecting", extra={"socket": self._socket_path, "retry_s": round(delay, 3)})
                if self._stopping.wait(delay):
                    return
            try:
                self.connect_attempts += 1
                client = self._connect_once()
            except Exception as exc:  # the nucleus is down, restarting, or refused us
                refused = token_refused(exc)
                if refused and self._token_refused():
                    self._give_up()
                    return
                delay = self.backoff.failed()
                detail = f"{type(exc).__name__}: {exc}"[:300]
                extra = {"socket": self._socket_path, "error": detail, "retry_s": round(delay, 3)}
                if refused:
                    extra["token_refusals"] = self.token_refusals
                    log.warning("IPC connect refused our token (SVCUID), retrying", extra=extra)
                else:
                    log.warning("IPC connect failed (the nucleus is not reachable), retrying", extra=extra)
                if self._stopping.wait(delay):
                    return
                continue
            self.backoff.connected()
            self.token_refusals, self._first_refusal = 0, None
            with self._lock:
                if self._stopping.is_set():
                    _close_client(client)
                    return
                self._client = client
                self._connected.set()
                self.connects += 1
                callbacks = list(self._callbacks)
            was_connected = True
            log.info("IPC connected to the nucleus", extra={"socket": self._socket_path, "connects": self.connects})
            _run_callbacks(callbacks, client)

    def _connect_once(self) -> GreengrassCoreIPCClientV2:
        from awsiot.eventstreamrpc import LifecycleHandler
        from awsiot.greengrasscoreipc import connect
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        with self._lock:
            self._generation += 1
            generation = self._generation
        owner = self

        class _Lifecycle(LifecycleHandler):
            def on_disconnect(self, reason: Exception | None) -> None:
                owner._on_disconnect(generation, reason)

            def on_error(self, error: Exception) -> bool:
                log.warning("IPC connection error", extra={"error": str(error)[:300]})
                return True

        ipc = connect(
            ipc_socket=self._socket_path,
            authtoken=self._token,
            lifecycle_handler=_Lifecycle(),
            timeout=self.connect_timeout_s,
        )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gg-ipc-events")
        return GreengrassCoreIPCClientV2(client=ipc, executor=executor)

    def _on_disconnect(self, generation: int, reason: Exception | None) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._connected.clear()
            self.disconnects += 1
        if not self._stopping.is_set():
            log.warning("IPC connection to the nucleus lost", extra={"reason": str(reason)[:300] if reason else None})
        self._wake.set()


def _close_client(client: Any) -> None:
    try:
        client.close(executor_wait=False)
    except Exception as exc:
        log.debug("closing the IPC client failed: %s", exc)


def as_provider(client: Any) -> tuple[ClientProvider, bool]:
    """``(provider, owned)`` for what a user passed as ``client``: None → a new IpcConnection (owned);
    a provider → itself; a GreengrassCoreIPCClientV2 → a StaticConnection."""
    if client is None:
        return IpcConnection(), True
    if isinstance(client, IpcConnection | StaticConnection):
        return client, False
    if hasattr(client, "add_connect_callback") and hasattr(client, "wait_connected"):
        return client, False
    return StaticConnection(client), False
