"""JBD frames on the wire.

Request:  ``DD <A5 read | 5A write> <register> <len> <data> <chk16> 77``
Response: ``DD <register> <status> <len> <data> <chk16> 77``

Both have the length at byte 3, so a frame is ``7 + len`` bytes. ``chk16 = (0x10000 - sum(bytes 2 ..
before the checksum)) & 0xFFFF``, big-endian (for a response: status, len, data; for a request:
len, data preceded by the register byte). Status 0x00 is OK; anything else is an error reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hardware.errors import ChecksumError, FramingError
from hardware.transports.framing import FrameSpec

START = 0xDD
END = 0x77
READ = 0xA5
WRITE = 0x5A

REG_BASIC_INFO = 0x03
REG_CELL_VOLTAGES = 0x04
REG_HARDWARE_NAME = 0x05
REG_ERROR_COUNTS = 0xAA


def checksum(body: bytes | bytearray | memoryview) -> int:
    return (0x10000 - sum(body)) & 0xFFFF


class JbdFrameSpec(FrameSpec):
    marker = bytes([START])

    def __init__(self, kind: Literal["response", "request"] = "response") -> None:
        self.kind = kind
        self.name = f"jbd {kind}"

    def frame_length(self, buf: bytes | bytearray) -> int | None:
        if len(buf) < 4:
            if self.kind == "request" and len(buf) >= 2 and buf[1] not in (READ, WRITE):
                raise FramingError(f"jbd request: byte 1 is 0x{buf[1]:02x}, not A5/5A")
            return None
        if self.kind == "request" and buf[1] not in (READ, WRITE):
            raise FramingError(f"jbd request: byte 1 is 0x{buf[1]:02x}, not A5/5A")
        return 7 + buf[3]

    def validate(self, frame: bytes) -> None:
        if frame[-1] != END:
            raise FramingError(f"{self.name}: end byte 0x{frame[-1]:02x}, expected 0x77")
        expected = checksum(frame[2:-3])
        received = (frame[-3] << 8) | frame[-2]
        if expected != received:
            raise ChecksumError(f"{self.name}: checksum 0x{received:04x}, computed 0x{expected:04x}")


RESPONSE_SPEC = JbdFrameSpec("response")
REQUEST_SPEC = JbdFrameSpec("request")


@dataclass(frozen=True, slots=True)
class JbdResponse:
    register: int
    status: int
    data: bytes


@dataclass(frozen=True, slots=True)
class JbdRequest:
    write: bool
    register: int
    data: bytes


def parse_response(frame: bytes) -> JbdResponse:
    """Validate one complete response frame (exactly; no garbage) and split it."""
    RESPONSE_SPEC.parse_exact(frame)
    return JbdResponse(register=frame[1], status=frame[2], data=bytes(frame[4:-3]))


def parse_request(frame: bytes) -> JbdRequest:
    REQUEST_SPEC.parse_exact(frame)
    return JbdRequest(write=frame[1] == WRITE, register=frame[2], data=bytes(frame[4:-3]))


def build_request(register: int, data: bytes = b"", write: bool = False) -> bytes:
    body = bytes([register & 0xFF, len(data)]) + data
    return bytes([START, WRITE if write else READ]) + body + checksum(body).to_bytes(2, "big") + bytes([END])


def build_response(register: int, data: bytes, status: int = 0) -> bytes:
    if len(data) > 255:
        raise ValueError("jbd data is at most 255 bytes")
    body = bytes([status & 0xFF, len(data)]) + data
    return bytes([START, register & 0xFF]) + body + checksum(body).to_bytes(2, "big") + bytes([END])
