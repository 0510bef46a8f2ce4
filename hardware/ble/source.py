"""The ``ble:`` source: a BLE pack read through aiobmsble, behind the synchronous Source interface.

aiobmsble is asyncio; the agent polls synchronously. Each source owns one event loop in a daemon thread of its
own (:class:`_LoopThread`); ``poll()`` hands the coroutine to it and waits. The polling skeleton is the serial
drivers' (:class:`~hardware.bms.polling.PolledSource`): bounded retries inside a poll, and after a failed poll a
reconnect with exponential backoff, so the agent raises ``source_offline`` after
``source.offline_after_failures`` failed polls and clears it when a reading comes back, as for a serial pack.

Life cycle: ``open()`` (or the first poll) scans for the pack (by address or advertised name), picks the
aiobmsble class (``type=`` or, with ``type=auto``, aiobmsble's advertisement matchers), and connects. A poll is
one ``async_update()`` under ``timeout``; the link is watched while it runs, so a pack that drops the connection
mid-poll fails the poll at once instead of waiting out the timeout. Errors, as the serial drivers give them:

* pack not found in the scan, connection refused or lost, any bleak/BlueZ error → :class:`SourceUnavailable`
  (the next poll reconnects after the backoff delay; a lost pack is scanned for again);
* no reply within ``timeout`` → :class:`SourceTimeout`; notifications arrived but none was a valid reply
  (garbage, a wrong ``type=``) → :class:`FramingError`;
* a reply aiobmsble could not complete, or without voltage/current → :class:`DecodeError`; values outside the
  physical limits → :class:`ImplausibleValueError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hardware.ble.mapping import reading_from_sample
from hardware.ble.support import require_aiobmsble
from hardware.ble.url import BleTarget, parse_ble_url
from hardware.bms.options import DriverOptions, make_source_id, parse_common_options
from hardware.bms.polling import PolledSource, build_sample
from hardware.errors import (
    DecodeError,
    FramingError,
    SourceConfigError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SCAN_TIMEOUT_S = 15.0
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: how often the link is checked while a poll runs
LINK_CHECK_S = 0.05
#: extra wall time the polling thread grants the loop beyond a coroutine's own timeout (cancelling is not instant)
_GRACE_S = 5.0
BLE_OPTIONS = frozenset({"type", "name", "scan_timeout", "connect_timeout", "adapter", "secret"})


@dataclass(frozen=True, slots=True)
class Found:
    """A scanned pack: bleak's ``BLEDevice`` and the ``AdvertisementData`` it was seen with."""

    device: Any
    advertisement: Any


class DeviceFinder(Protocol):
    """Finds the pack a URL names (production: :class:`BleakFinder`; tests pass a fake)."""

    async def find(self, target: BleTarget, timeout_s: float) -> Found | None: ...


class BleakFinder:
    """Scan with bleak until a device matching the target advertises, or ``timeout_s`` passes."""

    def __init__(self, adapter: str | None = None) -> None:
        self.adapter = adapter

    async def find(self, target: BleTarget, timeout_s: float) -> Found | None:
        from bleak import BleakScanner

        seen: dict[str, Any] = {}

        def wanted(device: Any, adv: Any) -> bool:
            if target.matches(device.address, adv.local_name or device.name):
                seen["adv"] = adv
                return True
            return False

        kwargs: dict[str, Any] = {"bluez": {"adapter": self.adapter}} if self.adapter else {}
        device = await BleakScanner.find_device_by_filter(wanted, timeout=timeout_s, **kwargs)
        return None if device is None else Found(device, seen.get("adv"))


class _LoopThread:
    """One asyncio loop in a daemon thread; ``run`` executes a coroutine there and waits for its result."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    def run(self, coro: Coroutine[Any, Any, T], wait_s: float) -> T:
        """The coroutine's result (or its exception); ``wait_s`` bounds the wait (it has its own timeout)."""
        if self._loop is None:
            coro.close()
            raise SourceUnavailable(f"{self.name}: event loop not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done, _ = concurrent.futures.wait([future], timeout=wait_s)
        if not done:
            future.cancel()
            raise SourceTimeout(f"{self.name}: the BLE event loop did not finish within {wait_s:.1f} s")
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise SourceUnavailable(f"{self.name}: cancelled") from None

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()


def _family_classes(aiobmsble_utils: Any) -> dict[str, Any]:
    """aiobmsble's families: module name without ``_bms`` → its BMS class (not its ``dummy`` test plug-in)."""
    families = {m.__name__.rsplit(".", 1)[-1].removesuffix("_bms"): m.BMS for m in aiobmsble_utils.load_bms_plugins()}
    families.pop("dummy", None)
    return families


def supported_families() -> list[str]:
    """The ``type=`` values aiobmsble offers here (raises BleSupportMissing without it)."""
    require_aiobmsble()
    return sorted(_family_classes(importlib.import_module("aiobmsble.utils")))


class BleSource(PolledSource):
    def __init__(
        self,
        source_id: str,
        *,
        target: BleTarget,
        bms_type: str,
        options: DriverOptions,
        scan_timeout_s: float = DEFAULT_SCAN_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        adapter: str | None = None,
        secret: str = "",
        finder: DeviceFinder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_aiobmsble()
        super().__init__(source_id, options, clock)
        self._aiobmsble = importlib.import_module("aiobmsble")
        self._utils = importlib.import_module("aiobmsble.utils")
        self._bleak_exc = importlib.import_module("bleak.exc")
        self.target = target
        self.bms_type = bms_type
        self._families = _family_classes(self._utils)
        self._cls: Any = None
        if bms_type != "auto":
            if bms_type not in self._families:
                raise SourceConfigError(
                    f"{source_id}: type={bms_type!r} is not an aiobmsble family; known: auto, "
                    + ", ".join(sorted(self._families))
                )
            self._cls = self._families[bms_type]
        if secret and self._cls is not None and not getattr(self._cls, "accept_secret", False):
            raise SourceConfigError(f"{source_id}: the {bms_type} family takes no secret= (Bluetooth password)")
        self.scan_timeout_s = scan_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.secret = secret
        self.finder: DeviceFinder = finder or BleakFinder(adapter)
        self._runner = _LoopThread(f"ble-{source_id}")
        self._found: Found | None = None
        self._bms: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._rx_bytes = 0
        self._rx_notifications = 0
        #: the aiobmsble module that serves this pack once connected (``aiobmsble.bms.jbd_bms``)
        self.family: str | None = None

    # -- connection ---------------------------------------------------------------------------------
    def _connect(self) -> None:
        self._runner.start()
        budget = self.scan_timeout_s + self.connect_timeout_s
        try:
            self._runner.run(self._async_connect(), budget + _GRACE_S)
        except SourceUnavailable:
            raise
        except SourceConfigError:
            raise
        except Exception as exc:  # a scan that fails (BlueZ not running, no adapter, D-Bus refused) and the like
            raise SourceUnavailable(
                f"{self.source_id}: Bluetooth failed: {type(exc).__name__}: {exc} (is bluetoothd running, and may "
                "this user talk to it? hardware/README.md, Bluetooth LE packs)"
            ) from None

    async def _async_connect(self) -> None:
        if self._found is None:
            found = await self.finder.find(self.target, self.scan_timeout_s)
            if found is None:
                raise SourceUnavailable(
                    f"{self.source_id}: {self.target} not seen in a {self.scan_timeout_s:g} s scan (powered, in "
                    "range, not held by a phone app? `bluetoothctl scan le` lists what advertises)"
                )
            self._found = found
        found = self._found
        cls = self._cls
        if cls is None:  # type=auto: aiobmsble's advertisement matchers decide
            if found.advertisement is None:
                raise SourceUnavailable(f"{self.source_id}: no advertisement seen to detect the BMS type; set type=")
            cls = await self._utils.bms_identify(found.advertisement, found.device.address)
            if cls is None:
                self._found = None
                raise SourceUnavailable(
                    f"{self.source_id}: the advertisement of {found.device.address} "
                    f"({found.advertisement.local_name!r}) matches no aiobmsble family; set type= (known: "
                    + ", ".join(sorted(self._families))
                    + ")"
                )
        config = self._aiobmsble.BMSConfig(keep_alive=True, secret=self.secret)
        bms = cls(found.device, config)
        self._count_notifications(bms)
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await stack.enter_async_context(bms)
        except TimeoutError:
            await self._drop(bms)
            self._found = None
            raise SourceUnavailable(
                f"{self.source_id}: no connection to {found.device.address} within {self.connect_timeout_s:g} s"
            ) from None
        except PermissionError as exc:  # a wrong secret
            await self._drop(bms)
            raise SourceUnavailable(f"{self.source_id}: the BMS refused the connection: {exc}") from None
        except Exception as exc:
            await self._drop(bms)
            self._found = None  # scan again next time: BlueZ may have forgotten the device
            raise SourceUnavailable(
                f"{self.source_id}: connecting to {found.device.address} failed: {type(exc).__name__}: {exc}"
            ) from None
        self._bms, self._stack = bms, stack
        self.family = cls.get_bms_module()
        log.info("%s: connected to %s (%s)", self.source_id, found.device.address, self.family)

    def _count_notifications(self, bms: Any) -> None:
        """Count what the pack sends during a poll, to tell garbage (bytes, no valid reply) from silence."""
        handler = getattr(bms, "_notification_handler", None)
        if handler is None:  # pragma: no cover - aiobmsble changed; the poll still works, errors are less precise
            return

        def note(data: Any) -> None:
            self._rx_notifications += 1
            self._rx_bytes += len(data)

        if inspect.iscoroutinefunction(handler):

            async def counting_async(sender: Any, data: Any) -> None:
                note(data)
                await handler(sender, data)

            bms._notification_handler = counting_async
        else:

            def counting(sender: Any, data: Any) -> None:
                note(data)
                handler(sender, data)

            bms._notification_handler = counting

    @staticmethod
    async def _drop(bms: Any) -> None:
        """After a failed connect: make sure no half-open link stays behind (a cancelled connect may leave one)."""
        try:
            async with asyncio.timeout(5.0):
                await bms.disconnect()
        except Exception as exc:
            log.debug("dropping a failed BLE connection: %s: %s", type(exc).__name__, exc)

    @staticmethod
    async def _close_quietly(stack: contextlib.AsyncExitStack) -> None:
        try:
            async with asyncio.timeout(5.0):
                await stack.aclose()
        except Exception as exc:  # closing a dead link
            log.debug("closing the BLE connection: %s: %s", type(exc).__name__, exc)

    def _disconnect(self) -> None:
        stack, self._stack, self._bms = self._stack, None, None
        if stack is None:
            return
        try:
            self._runner.run(self._close_quietly(stack), 5.0 + _GRACE_S)
        except SourceError as exc:
            log.debug("%s: disconnect: %s", self.source_id, exc)

    def close(self) -> None:
        super().close()
        self._runner.stop()

    # -- polling ----------------------------------------------------------------------------------------
    def _read(self) -> Sample:
        bms = self._bms
        if bms is None or not bms.is_connected:
            raise SourceUnavailable(f"{self.source_id}: the BLE link is down")
        self._rx_bytes = self._rx_notifications = 0
        try:
            data = self._runner.run(self._async_update(bms), self.options.timeout_s + _GRACE_S)
        except SourceError:
            raise
        except TimeoutError:
            raise self._no_reply() from None
        except (self._bleak_exc.BleakError, EOFError, ConnectionError, OSError) as exc:
            raise SourceUnavailable(f"{self.source_id}: BLE error: {type(exc).__name__}: {exc}") from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DecodeError(f"{self.source_id}: aiobmsble could not decode the reply: {exc}") from None
        reading = reading_from_sample(data)
        return build_sample(
            self,
            voltage_v=reading.voltage_v,
            current_a=reading.current_a,
            temperatures_c=reading.temperatures_c,
            soc_pct=reading.soc_pct,
            cell_voltages_v=reading.cell_voltages_v,
            reported_cells=reading.reported_cells,
        )

    def _no_reply(self) -> SourceError:
        bms = self._bms
        if bms is None or not bms.is_connected:
            return SourceUnavailable(f"{self.source_id}: the BLE link dropped during the poll")
        if self._rx_bytes:
            return FramingError(
                f"{self.source_id}: {self._rx_bytes} bytes in {self._rx_notifications} notification(s) within "
                f"{self.options.timeout_s:g} s, none a valid {self.family or 'BMS'} reply (garbage, or a wrong type=?)"
            )
        return SourceTimeout(f"{self.source_id}: no reply within {self.options.timeout_s:g} s")

    async def _async_update(self, bms: Any) -> dict[str, Any]:
        update = asyncio.ensure_future(bms.async_update())
        watch = asyncio.ensure_future(self._link_lost(bms))
        try:
            async with asyncio.timeout(self.options.timeout_s):
                await asyncio.wait({update, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (update, watch):
                task.cancel()
            await asyncio.gather(update, watch, return_exceptions=True)
        if update.done() and not update.cancelled():
            return dict(update.result())
        raise SourceUnavailable(f"{self.source_id}: the BLE link dropped during the poll (seen while waiting)")

    @staticmethod
    async def _link_lost(bms: Any) -> None:
        while bms.is_connected:
            await asyncio.sleep(LINK_CHECK_S)


def _positive(url: SourceUrl, name: str, default: float) -> float:
    value = url.float_option(name, default)
    if value <= 0:
        raise SourceConfigError(f"source URL {url.raw!r}: {name} must be > 0")
    return value


def create(url: SourceUrl, settings: SourceSettings, finder: DeviceFinder | None = None) -> BleSource:
    """The registry's factory for ``ble:`` URLs (module docstring of hardware.ble.url for the forms)."""
    target, bms_type = parse_ble_url(url)
    options = parse_common_options(url, settings, extra_options=BLE_OPTIONS, default_timeout_s=DEFAULT_TIMEOUT_S)
    require_aiobmsble()  # after the URL checks: a malformed URL is reported as such on any Python
    adapter = url.option("adapter") or None
    if adapter is not None and not adapter.replace("_", "").isalnum():
        raise SourceConfigError(f"source URL {url.raw!r}: adapter={adapter!r} is not an adapter name (hci0)")
    return BleSource(
        make_source_id("ble", str(target).removeprefix("name=")),
        target=target,
        bms_type=bms_type,
        options=options,
        scan_timeout_s=_positive(url, "scan_timeout", DEFAULT_SCAN_TIMEOUT_S),
        connect_timeout_s=_positive(url, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
        adapter=adapter,
        secret=url.option("secret") or "",
        finder=finder,
    )


__all__ = ["BleSource", "BleakFinder", "DeviceFinder", "Found", "create", "supported_families"]
