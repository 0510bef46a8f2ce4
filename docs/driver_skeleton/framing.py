"""Frames on the wire of the EXAMPLE protocol (a template: replace with your BMS' framing).

Framing only — where a frame starts and ends and whether it arrived intact; what the payload *means* is
decode.py's business. Both directions use one shape::

    AA <register> <len> <data: len bytes> <chk> 55

``chk = (register + len + sum(data)) & 0xFF``; a frame is ``5 + len`` bytes. A request is a frame with no
data (``AA 10 00 10 55`` asks for register 0x10).
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import ChecksumError, FramingError
from hardware.transports.framing import FrameSpec

START = 0xAA
END = 0x55
#: the one register this example reads: pack status (decode.py has its layout)
REG_STATUS = 0x10
#: the largest payload the protocol allows (len is one byte, but a sane BMS stays well under)
MAX_DATA = 200


def checksum(body: bytes | bytearray | memoryview) -> int:
    """Sum of register, len and data, modulo 256."""
    return sum(body) & 0xFF


class ExampleFrameSpec(FrameSpec):
    """What :class:`~hardware.transports.framing.StreamFramer` needs to cut frames out of a byte stream."""

    marker = bytes([START])
    name = "example"

    def frame_length(self, buf: bytes | bytearray) -> int | None:
        if len(buf) < 3:  # the length byte is at offset 2
            return None
        if buf[2] > MAX_DATA:
            raise FramingError(f"{self.name}: length byte {buf[2]} > {MAX_DATA}")
        return 5 + buf[2]

    def validate(self, frame: bytes) -> None:
        if frame[-1] != END:
            raise FramingError(f"{self.name}: end byte 0x{frame[-1]:02x}, expected 0x{END:02x}")
        expected, received = checksum(frame[1:-2]), frame[-2]
        if expected != received:
            raise ChecksumError(f"{self.name}: checksum 0x{received:02x}, computed 0x{expected:02x}")


SPEC = ExampleFrameSpec()


@dataclass(frozen=True, slots=True)
class Frame:
    register: int
    data: bytes


def parse_frame(frame: bytes) -> Frame:
    """Validate exactly one frame (nothing before or after it) and split it."""
    SPEC.parse_exact(frame)
    return Frame(register=frame[1], data=bytes(frame[3:-2]))


def build_frame(register: int, data: bytes = b"") -> bytes:
    """A frame; with no data, the request for ``register``."""
    if len(data) > MAX_DATA:
        raise ValueError(f"{len(data)} bytes of data > {MAX_DATA}")
    body = bytes([register & 0xFF, len(data)]) + data
    return bytes([START]) + body + bytes([checksum(body), END])
