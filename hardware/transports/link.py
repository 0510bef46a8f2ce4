"""Request/reply over a serial-like port with a :class:`~hardware.transports.framing.StreamFramer`.

Timing rules (one place for all wired BMS protocols):

* before a request, stale input is discarded, so a late reply to an earlier request cannot be taken
  for the answer to this one;
* the port's own read timeout is short (``gap_s``): a read that returns nothing means the line has
  been quiet for that long. After a quiet gap an incomplete frame is dropped as truncated, and if a
  bad frame (checksum, end mark) or truncation was seen and nothing valid followed, the error is
  raised at once instead of waiting for the whole reply timeout;
* after ``timeout_s`` without a valid frame: SourceTimeout if not a single byte came, else the most
  telling framing/checksum error.

Port I/O errors (adapter unplugged ...) become SourceUnavailable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hardware.errors import FramingError, SourceTimeout, SourceUnavailable
from hardware.transports.framing import StreamFramer
from hardware.transports.serial_port import SerialLike

log = logging.getLogger(__name__)

#: default inter-byte quiet gap that ends a reply (s); USB adapters add up to ~16 ms latency
DEFAULT_GAP_S = 0.1


class FrameLink:
    """One request, one or more reply frames, on one port."""

    def __init__(
        self,
        port: SerialLike,
        framer: StreamFramer,
        timeout_s: float,
        gap_s: float = DEFAULT_GAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.framer = framer
        self.timeout_s = timeout_s
        self.gap_s = min(gap_s, timeout_s)
        self._clock = clock
        self._received = 0
        try:
            port.timeout = self.gap_s
        except (AttributeError, ValueError, OSError):  # a fake without a settable timeout
            log.debug("port %r has no settable timeout", port)

    def send(self, request: bytes) -> float:
        """Discard stale input, send ``request``; return the reply deadline (monotonic seconds)."""
        try:
            self.port.reset_input_buffer()
            self.port.write(request)
        except OSError as exc:  # serial.SerialException is an OSError
            raise SourceUnavailable(f"serial write failed: {exc}") from exc
        self.framer.reset()
        self._received = 0
        return self._clock() + self.timeout_s

    def receive(self, deadline: float, accept: Callable[[bytes], bool] | None = None) -> bytes:
        """Next valid frame for which ``accept`` is true (others are skipped), before ``deadline``."""
        framer = self.framer
        while True:
            frame = framer.next_frame()
            while frame is not None:
                if accept is None or accept(frame):
                    return frame
                log.debug("skipping unrelated frame %s", frame.hex())
                frame = framer.next_frame()
            if self._clock() >= deadline:
                raise self._give_up()
            try:
                waiting = self.port.in_waiting
                chunk = self.port.read(waiting if waiting > 0 else 1)
            except OSError as exc:
                raise SourceUnavailable(f"serial read failed: {exc}") from exc
            if chunk:
                self._received += len(chunk)
                framer.feed(chunk)
                continue
            # the line has been quiet for gap_s
            frame = framer.next_frame(flush=True)
            if frame is not None:
                if accept is None or accept(frame):
                    return frame
                continue
            error = framer.best_error()
            if error is not None and self._received:
                raise error

    def request(self, request: bytes, accept: Callable[[bytes], bool] | None = None) -> bytes:
        return self.receive(self.send(request), accept)

    def _give_up(self) -> Exception:
        if not self._received:
            return SourceTimeout(f"no reply within {self.timeout_s:g} s")
        error = self.framer.best_error()
        if error is not None:
            return error
        return FramingError(f"{self._received} bytes received but no complete frame within {self.timeout_s:g} s")
