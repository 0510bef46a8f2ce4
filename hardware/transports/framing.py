"""Stream framing shared by the byte-oriented BMS protocols (JBD, Daly, JK).

A protocol describes its frames with a :class:`FrameSpec` (start marker, how to get the total length
from the header, how to validate a complete frame). :class:`StreamFramer` owns a receive buffer: bytes
are fed as they arrive and :meth:`StreamFramer.next_frame` returns the next complete, valid frame.
Everything else is dropped (garbage before a marker, a candidate whose header, end mark or checksum is
wrong: the framer skips one byte and searches the next marker, i.e. it resynchronises), and the most
telling reason is kept so that a caller who gives up can raise the right typed error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from hardware.errors import ChecksumError, FramingError, ProtocolError


class FrameSpec(ABC):
    """Static description of one protocol's frame layout. Implementations must be stateless."""

    #: bytes every frame starts with
    marker: bytes
    #: human name for messages
    name: str

    @abstractmethod
    def frame_length(self, buf: bytes | bytearray) -> int | None:
        """Total frame length from a buffer that starts with ``marker``.

        Return None if more bytes are needed to know it; raise FramingError if the header is impossible.
        """

    @abstractmethod
    def validate(self, frame: bytes) -> None:
        """Check a complete candidate frame (end mark, checksum). Raise FramingError or ChecksumError."""

    def parse_exact(self, data: bytes) -> bytes:
        """Validate ``data`` as exactly one frame (no garbage before, nothing after) and return it."""
        if not data.startswith(self.marker):
            raise FramingError(
                f"{self.name}: frame does not start with {self.marker.hex()} (got {data[:4].hex() or 'nothing'})"
            )
        length = self.frame_length(data)
        if length is None:
            raise FramingError(f"{self.name}: truncated header ({len(data)} bytes)")
        if len(data) < length:
            raise FramingError(f"{self.name}: truncated frame: {len(data)} of {length} bytes")
        if len(data) > length:
            raise FramingError(f"{self.name}: {len(data) - length} trailing bytes after a {length}-byte frame")
        self.validate(data)
        return data


_RANK_GARBAGE = 1
_RANK_TRUNCATED = 2
_RANK_BAD_FRAME = 3
_RANK_CHECKSUM = 4


class StreamFramer:
    """Receive buffer plus resync for one :class:`FrameSpec`."""

    def __init__(self, spec: FrameSpec, max_buffer: int = 8192) -> None:
        self.spec = spec
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        self._rank = 0
        self.garbage_bytes = 0
        self.frames = 0

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget buffered bytes and recorded errors (before a new request)."""
        self._buf.clear()
        self._error = None
        self._rank = 0
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def best_error(self) -> ProtocolError | None:
        """The most telling reason bytes were dropped since the last reset, or None."""
        if self._error is not None:
            return self._error
        if self.garbage_bytes:
            return FramingError(f"{self.spec.name}: {self.garbage_bytes} bytes of garbage without a valid frame")
        return None

    def _note(self, rank: int, error: ProtocolError) -> None:
        if rank >= self._rank:
            self._rank = rank
            self._error = error

    # -- data ------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data
        overflow = len(self._buf) - self.max_buffer
        if overflow > 0:
            del self._buf[:overflow]
            self.garbage_bytes += overflow

    def next_frame(self, flush: bool = False) -> bytes | None:
        """Return the next valid frame, or None if none is complete yet.

        ``flush=True`` means the line went quiet: an incomplete candidate at the head of the buffer will
        not be completed, so it is dropped as truncated and the search goes on behind it.
        """
        buf = self._buf
        marker = self.spec.marker
        while True:
            idx = buf.find(marker)
            if idx < 0:
                keep = len(marker) - 1 if not flush else 0
                drop = len(buf) - keep
                if drop > 0:
                    self.garbage_bytes += drop
                    del buf[:drop]
                return None
            if idx:
                self.garbage_bytes += idx
                del buf[:idx]
            try:
                length = self.spec.frame_length(buf)
            except FramingError as exc:
                self._note(_RANK_BAD_FRAME, exc)
                self.garbage_bytes += 1
                del buf[:1]
                continue
            if length is None or len(buf) < length:
                if flush:
                    expected = "?" if length is None else str(length)
                    self._note(
                        _RANK_TRUNCATED,
                        FramingError(f"{self.spec.name}: truncated frame: {len(buf)} of {expected} bytes"),
                    )
                    self.garbage_bytes += 1
                    del buf[:1]
                    continue
                return None
            frame = bytes(buf[:length])
            try:
                self.spec.validate(frame)
            except ChecksumError as exc:
                self._note(_RANK_CHECKSUM, exc)
                self.garbage_bytes += 1
                del buf[:1]
                continue
            except FramingError as exc:
                self._note(_RANK_BAD_FRAME, exc)
                self.garbage_bytes += 1
                del buf[:1]
                continue
            del buf[:length]
            self.frames += 1
            return frame
