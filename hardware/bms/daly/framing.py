"""Daly frames on the wire: always 13 bytes.

``A5 <address> <data id> 08 <8 data bytes> <checksum>``, checksum = sum of the first 12 bytes & 0xFF.
The host sends address 0x40 (RS485 port) or 0x80 (UART / Bluetooth port); the BMS answers with its own
address (0x01). Requests carry 8 zero data bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import ChecksumError, FramingError
from hardware.transports.framing import FrameSpec

START = 0xA5
FRAME_LEN = 13
DATA_LEN = 8
HOST_RS485 = 0x40
HOST_UART = 0x80


class DalyFrameSpec(FrameSpec):
    marker = bytes([START])
    name = "daly"

    def frame_length(self, buf: bytes | bytearray) -> int | None:
        if len(buf) < 4:
            return None
        if buf[3] != DATA_LEN:
            raise FramingError(f"daly: length byte 0x{buf[3]:02x}, expected 0x08")
        return FRAME_LEN

    def validate(self, frame: bytes) -> None:
        expected = sum(frame[:12]) & 0xFF
        if frame[12] != expected:
            raise ChecksumError(f"daly: checksum 0x{frame[12]:02x}, computed 0x{expected:02x}")


SPEC = DalyFrameSpec()


@dataclass(frozen=True, slots=True)
class DalyFrame:
    address: int
    data_id: int
    data: bytes


def parse_frame(frame: bytes) -> DalyFrame:
    """Validate exactly one 13-byte frame and split it."""
    SPEC.parse_exact(frame)
    return DalyFrame(address=frame[1], data_id=frame[2], data=bytes(frame[4:12]))


def build_frame(address: int, data_id: int, data: bytes = bytes(DATA_LEN)) -> bytes:
    if len(data) != DATA_LEN:
        raise ValueError("daly data is exactly 8 bytes")
    head = bytes([START, address & 0xFF, data_id & 0xFF, DATA_LEN]) + data
    return head + bytes([sum(head) & 0xFF])


def build_request(data_id: int, host_address: int = HOST_RS485) -> bytes:
    return build_frame(host_address, data_id)
