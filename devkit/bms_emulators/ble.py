"""A fake Bluetooth LE world for the ``ble:`` source's tests: packs that advertise, accept connections and answer
requests with notification frames, and a bleak-client stand-in that aiobmsble talks to unchanged.

Nothing here decodes anything: the frames come from the project's own protocol emulators (JBD's BLE service
carries its UART frames, so :class:`JbdBlePeer` answers with :class:`~devkit.bms_emulators.jbd.JbdEmulator`'s
replies for the simulated pack) or are real captures replayed as they were recorded (:class:`CapturePeer`, e.g.
JK's BLE protocol, which differs from its UART one and has no emulator here); aiobmsble's real decoder parses them.

:class:`FakeRadio` ties it together: it is the source's device finder (a scan that sees the packs in range) and,
through :meth:`FakeRadio.patch_aiobmsble`, the bleak client aiobmsble creates (``aiobmsble.basebms.BleakClient``
and ``establish_connection`` are replaced while the patch is active). Faults per pack: silence (no reply),
garbage, bad checksums, a disconnect mid-poll, out of range (not found, connection refused).

Used by tests only; needs bleak and aiobmsble (Python >= 3.12), imported when a radio is built.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from devkit.bms_emulators.faults import FaultControl
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.jbd import JbdEmulator

#: the payload of one notification at the default ATT MTU (23 bytes minus the 3-byte header)
DEFAULT_CHUNK = 20
_BASE_UUID = "-0000-1000-8000-00805f9b34fb"


def full_uuid(spec: str) -> str:
    """``ff01`` → ``0000ff01-0000-1000-8000-00805f9b34fb`` (Bluetooth base UUID); 128-bit ones lower-cased."""
    spec = spec.lower()
    if len(spec) == 4:
        return f"0000{spec}{_BASE_UUID}"
    if len(spec) == 8:
        return f"{spec}{_BASE_UUID}"
    return spec


@dataclass
class FakeCharacteristic:
    uuid: str
    handle: int
    properties: list[str]
    descriptors: list[Any] = field(default_factory=list)
    description: str = "fake"

    def __str__(self) -> str:
        return f"{self.uuid} (Handle: {self.handle})"


@dataclass
class FakeService:
    uuid: str
    handle: int
    characteristics: list[FakeCharacteristic]

    def __str__(self) -> str:
        return f"{self.uuid} (Handle: {self.handle})"


class FakeServices:
    """What ``BleakClient.services`` offers aiobmsble: iteration, and lookup by UUID or handle."""

    def __init__(self, services: list[FakeService]) -> None:
        self._services = services

    def __iter__(self) -> Iterator[FakeService]:
        return iter(self._services)

    def get_service(self, spec: str) -> FakeService | None:
        return next((s for s in self._services if s.uuid == full_uuid(spec)), None)

    def get_characteristic(self, spec: Any) -> FakeCharacteristic | None:
        for service in self._services:
            for char in service.characteristics:
                if (isinstance(spec, int) and char.handle == spec) or (
                    isinstance(spec, str) and char.uuid == full_uuid(spec)
                ):
                    return char
        return None


class PeerFault(enum.StrEnum):
    NONE = "none"
    SILENT = "silent"  # the request arrives, nothing comes back
    GARBAGE = "garbage"  # random bytes instead of a reply
    BAD_CHECKSUM = "bad_checksum"  # the reply with its checksum corrupted
    DROP = "drop"  # the link goes down right after the request (later writes fail: "Not connected")
    DROP_STALL = "drop_stall"  # the same, but later writes hang (a BlueZ stack that stalls on a dead link)


class BlePeer:
    """One emulated pack on the air: what it advertises, its GATT services, and how it answers a write."""

    def __init__(
        self,
        address: str,
        local_name: str,
        services: list[FakeService],
        *,
        service_uuids: list[str] | None = None,
        manufacturer_data: dict[int, bytes] | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        self.address = address.upper()
        self.local_name = local_name
        self.services = FakeServices(services)
        self.service_uuids = service_uuids if service_uuids is not None else [s.uuid for s in services]
        self.manufacturer_data = manufacturer_data or {}
        self.chunk = chunk
        self.in_range = True
        self.fault = PeerFault.NONE
        self.faults = FaultControl(seed=11)
        self.requests: list[bytes] = []
        self.connects = 0
        #: connection attempts hang (a pack that advertises but never completes a connection)
        self.connect_hangs = False

    def replies(self, char: FakeCharacteristic, data: bytes) -> list[bytes]:
        """The byte stream answering one write (split into notifications by the client)."""
        raise NotImplementedError

    def corrupt(self, frame: bytes) -> bytes:
        return frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]

    def notify_char(self) -> FakeCharacteristic:
        for service in self.services:
            for char in service.characteristics:
                if "notify" in char.properties:
                    return char
        raise LookupError("no notify characteristic")


class JbdBlePeer(BlePeer):
    """A JBD/Xiaoxiang pack over BLE: service ff00, notify ff01, write ff02; the UART frames of
    :class:`JbdEmulator` for the simulated pack in ``feed``."""

    def __init__(
        self,
        address: str,
        feed: PackFeed,
        local_name: str = "JBD-SP04S034-L4S",
        auth: tuple[bytes, bytes] | None = None,
    ) -> None:
        ff01 = FakeCharacteristic(full_uuid("ff01"), 0x11, ["read", "notify"])
        ff02 = FakeCharacteristic(full_uuid("ff02"), 0x15, ["write-without-response", "write"])
        super().__init__(address, local_name, [FakeService(full_uuid("ff00"), 0x10, [ff01, ff02])])
        self.feed = feed
        self.emulator = JbdEmulator(feed)
        #: the Bluetooth password exchange (FF AA frames): the request this pack accepts and its recorded answer;
        #: any other FF AA request gets no answer
        self.auth = auth

    def replies(self, char: FakeCharacteristic, data: bytes) -> list[bytes]:
        if char.uuid != full_uuid("ff02"):
            return []
        if data.startswith(b"\xff\xaa"):
            return [self.auth[1]] if self.auth is not None and data == self.auth[0] else []
        frames = self.emulator.respond(data, self.feed.state()) or []
        if self.fault is PeerFault.BAD_CHECKSUM:
            return [self.corrupt(f) for f in frames]
        if self.fault is PeerFault.GARBAGE:
            return [self.faults.garbage(self.emulator.marker_bytes, 30, 60)]
        return frames


class CapturePeer(BlePeer):
    """A pack that answers from recorded frames: ``answers`` maps a predicate on the request to the recorded byte
    stream sent back (e.g. JK BLE: command 0x97 → its device-info frame, 0x96 → a cell-info frame)."""

    def __init__(
        self,
        address: str,
        local_name: str,
        services: list[FakeService],
        answers: list[tuple[Callable[[bytes], bool], bytes]],
        **kwargs: Any,
    ) -> None:
        super().__init__(address, local_name, services, **kwargs)
        self.answers = answers

    def replies(self, char: FakeCharacteristic, data: bytes) -> list[bytes]:
        for wanted, stream in self.answers:
            if wanted(data):
                if self.fault is PeerFault.BAD_CHECKSUM:
                    return [stream[:-1] + bytes([stream[-1] ^ 0x5A])]
                if self.fault is PeerFault.GARBAGE:
                    return [self.faults.garbage(b"\x55\xaa", 30, 60)]
                return [stream]
        return []


class FakeBleakClient:
    """The part of ``bleak.BleakClient`` aiobmsble uses, talking to a :class:`BlePeer` (None: not on the air)."""

    def __init__(self, radio: FakeRadio, device: Any, disconnected_callback: Any = None, **_: Any) -> None:
        self.radio = radio
        self.address = str(device.address).upper()
        self._on_disconnect = disconnected_callback
        self._connected = False
        self._handlers: dict[int, Callable[..., Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stalled = False

    @property
    def peer(self) -> BlePeer | None:
        return self.radio.peers.get(self.address)

    @property
    def is_connected(self) -> bool:
        return self._connected and self.peer is not None and self.peer.in_range

    @property
    def services(self) -> FakeServices:
        peer = self.peer
        return peer.services if peer is not None else FakeServices([])

    async def connect(self, **_: Any) -> bool:
        from bleak.exc import BleakDeviceNotFoundError

        peer = self.peer
        if peer is None or not peer.in_range:
            raise BleakDeviceNotFoundError(self.address, f"device {self.address} not found")
        if peer.connect_hangs:
            await asyncio.Event().wait()  # only cancelling ends it
        peer.connects += 1
        self._connected = True
        self.radio.clients.append(self)
        return True

    async def disconnect(self) -> bool:
        if self._connected:
            self._connected = False
            self._handlers.clear()
        return True

    def drop(self) -> None:
        """The link goes down (the pack went out of range or reset)."""
        if self._connected:
            self._connected = False
            self._handlers.clear()
            if self._on_disconnect is not None:
                self._on_disconnect(self)

    def _char(self, spec: Any) -> FakeCharacteristic:
        from bleak.exc import BleakCharacteristicNotFoundError, BleakError

        if not self.is_connected:
            raise BleakError("Not connected")
        char = self.services.get_characteristic(spec)
        if char is None:
            raise BleakCharacteristicNotFoundError(spec)
        return char

    async def start_notify(self, spec: Any, callback: Callable[..., Any], **_: Any) -> None:
        char = self._char(spec)
        self._handlers[char.handle] = callback

    async def stop_notify(self, spec: Any) -> None:
        char = self._char(spec)
        self._handlers.pop(char.handle, None)

    async def read_gatt_char(self, spec: Any, **_: Any) -> bytearray:
        self._char(spec)
        return bytearray()

    async def write_gatt_char(self, spec: Any, data: Any, response: bool | None = None) -> None:
        if self._stalled:
            await asyncio.Event().wait()  # never answers; only cancelling ends it
        char = self._char(spec)
        peer = self.peer
        assert peer is not None
        request = bytes(data)
        peer.requests.append(request)
        loop = asyncio.get_running_loop()
        if peer.fault in (PeerFault.DROP, PeerFault.DROP_STALL):
            self._stalled = peer.fault is PeerFault.DROP_STALL
            loop.call_soon(self.drop)
            return
        if peer.fault is PeerFault.SILENT:
            return
        notify = peer.notify_char()
        for stream in peer.replies(char, request):
            for i in range(0, len(stream), peer.chunk):
                loop.call_soon(self._deliver, notify, bytearray(stream[i : i + peer.chunk]))

    def _deliver(self, char: FakeCharacteristic, data: bytearray) -> None:
        handler = self._handlers.get(char.handle)
        if handler is None or not self.is_connected:
            return
        result = handler(char, data)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class FakeRadio:
    """The packs on the air. A device finder for the ``ble:`` source, and the bleak client aiobmsble gets."""

    def __init__(self) -> None:
        self.peers: dict[str, BlePeer] = {}
        self.clients: list[FakeBleakClient] = []
        self.scans = 0
        #: raised by the next scans while set (e.g. BlueZ not running, D-Bus access denied)
        self.scan_error: Exception | None = None

    def add(self, peer: BlePeer) -> BlePeer:
        self.peers[peer.address] = peer
        return peer

    def set_in_range(self, address: str, in_range: bool) -> None:
        """Take a pack off the air (its connections drop, scans miss it) or bring it back."""
        peer = self.peers[address.upper()]
        peer.in_range = in_range
        if not in_range:
            for client in self.clients:
                if client.address == peer.address:
                    client._connected = False  # the link is gone; its loop notices through is_connected

    async def find(self, target: Any, timeout_s: float) -> Any:
        """The source's DeviceFinder: the first pack in range the target matches (a scan that sees at once)."""
        from bleak.backends.device import BLEDevice
        from bleak.backends.scanner import AdvertisementData

        from hardware.ble.source import Found

        self.scans += 1
        if self.scan_error is not None:
            raise self.scan_error
        for peer in self.peers.values():
            if peer.in_range and target.matches(peer.address, peer.local_name):
                device = BLEDevice(peer.address, peer.local_name, details={})
                adv = AdvertisementData(
                    local_name=peer.local_name,
                    manufacturer_data=dict(peer.manufacturer_data),
                    service_data={},
                    service_uuids=list(peer.service_uuids),
                    tx_power=None,
                    rssi=-60,
                    platform_data=(),
                )
                return Found(device, adv)
        return None

    def client(self, device: Any, *args: Any, **kwargs: Any) -> FakeBleakClient:
        return FakeBleakClient(self, device, *args, **kwargs)

    async def establish_connection(self, client_class: Any, device: Any, name: str, **kwargs: Any) -> FakeBleakClient:
        client = FakeBleakClient(self, device, **kwargs)
        await client.connect()
        return client

    @contextmanager
    def patch_aiobmsble(self) -> Iterator[FakeRadio]:
        """While active, aiobmsble's BMS classes get this radio's clients instead of bleak's."""
        with mock.patch.multiple(
            "aiobmsble.basebms", BleakClient=self.client, establish_connection=self.establish_connection
        ):
            yield self
