"""A serial BMS emulated on a pseudo-terminal pair.

The emulator keeps both ends of ``os.openpty()``: a thread serves the master end, and the slave's path
(``/dev/pts/N``) is what a driver opens with pyserial, exactly like ``/dev/ttyUSB0``. Keeping the slave
open as well means a driver may close and reopen the port (reconnect) without the master seeing EIO.
The slave is put in raw mode, so no echo or newline translation touches binary frames.

Subclasses give the request frame layout and build replies from a :class:`PackState`; fault injection
is applied here, on the bytes, the same way for every protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import threading
import tty
from abc import ABC, abstractmethod
from types import TracebackType

from devkit.bms_emulators.faults import IMPLAUSIBLE_FACTOR, Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from hardware.simulator.state import PackState
from hardware.transports.framing import FrameSpec, StreamFramer

log = logging.getLogger(__name__)


class PtyDeviceEmulator(ABC):
    #: protocol name (the source URL scheme)
    protocol: str
    #: layout of the frames the host sends
    request_spec: FrameSpec
    #: bytes line noise must not contain (start markers), so "garbage" never forms a candidate frame
    marker_bytes: bytes

    def __init__(self, feed: PackFeed, faults: FaultControl | None = None) -> None:
        self.feed = feed
        self.faults = faults or FaultControl()
        self._master = -1
        self._slave = -1
        self._path = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.served = 0
        #: the state the last reply was built from (tests compare a Sample with it)
        self.last_state: PackState | None = None

    # -- protocol hooks ----------------------------------------------------------------------------
    @abstractmethod
    def respond(self, request: bytes, state: PackState) -> list[bytes] | None:
        """Reply frames for one valid request frame, or None to ignore it."""

    @abstractmethod
    def corrupt_checksum(self, frame: bytes) -> bytes:
        """The frame with its checksum made wrong."""

    def error_reply(self, request: bytes) -> list[bytes] | None:
        """The protocol's error answer to ``request``, or None if the protocol has none."""
        return None

    # -- life cycle --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        if not self._path:
            raise RuntimeError("emulator not started")
        return self._path

    @property
    def url(self) -> str:
        return f"{self.protocol}:{self.path}"

    def start(self) -> str:
        if self._thread is not None:
            return self._path
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self._path = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"{self.protocol}-emulator", daemon=True)
        self._thread.start()
        log.info("%s emulator on %s", self.protocol, self._path)
        return self._path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> PtyDeviceEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        framer = StreamFramer(self.request_spec)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    # quiet line: serve what is complete behind a half request, then drop the rest
                    while (request := framer.next_frame(flush=True)) is not None:
                        self._handle(request)
                    framer.reset()
                    continue
                framer.feed(os.read(self._master, 4096))
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("%s emulator: pty error: %s", self.protocol, exc)
                return
            while (request := framer.next_frame()) is not None:
                self._handle(request)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the emulator is not in the middle of a reply (e.g. a 'slow' one)."""
        return self._idle.wait(timeout_s)

    def _handle(self, request: bytes) -> None:
        self._idle.clear()
        try:
            self._reply(request)
        finally:
            self._idle.set()

    def _reply(self, request: bytes) -> None:
        fault = self.faults.pick()
        state = self.feed.state()
        if fault is Fault.IMPLAUSIBLE:
            state = dataclasses.replace(state, voltage_v=state.voltage_v * IMPLAUSIBLE_FACTOR)
        replies = self.respond(request, state)
        if replies is None:
            log.debug("%s emulator: no answer to %s", self.protocol, request.hex())
            return
        self.last_state = state
        self.served += 1
        if fault is Fault.EXCEPTION:
            replies = self.error_reply(request) or replies
        data: bytes
        if fault is Fault.BAD_CHECKSUM:
            data = b"".join(self.corrupt_checksum(f) for f in replies)
        elif fault is Fault.TRUNCATED:
            data = replies[0][: len(replies[0]) // 2]
        elif fault is Fault.SILENCE:
            return
        elif fault is Fault.GARBAGE:
            data = self.faults.garbage(self.marker_bytes)
        elif fault is Fault.GARBAGE_PREFIX:
            data = self.faults.garbage(self.marker_bytes) + b"".join(replies)
        else:
            if fault is Fault.SLOW and self._stop.wait(self.faults.slow_delay_s):
                return
            data = b"".join(replies)
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                # nobody reads the port and its buffer is full: a real line would lose the bytes too
                log.debug("%s emulator: pty buffer full, %d bytes dropped", self.protocol, len(view))
                return
            view = view[written:]
