"""JK "4E 57" frames on the wire (syssi/esphome-jk-bms docs/protocol-design-uart-ttl-gps-port.md)::

    4E 57 | length u16 | terminal id u32 | command | frame source | transport type | data ...
          | record number u32 | 68 | 00 00 | checksum u16

``length`` = total frame length - 2 (it counts itself but not the 4E 57 start). The checksum is the
16-bit sum of every byte before the checksum field, sent as ``00 00 <hi> <lo>``. Commands: 0x01
activate, 0x02 write, 0x03 read one register, 0x05 pair, 0x06 read all. Frame source: 0 BMS,
1 Bluetooth, 2 GPS, 3 PC. Transport type: 0 request, 1 response, 2 active upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import ChecksumError, FramingError
from hardware.transports.framing import FrameSpec

MARKER = b"\x4e\x57"
END_MARK = 0x68
HEADER_LEN = 11
TRAILER_LEN = 9  # record number (4) + end mark (1) + checksum (4)
MIN_FRAME = HEADER_LEN + TRAILER_LEN
MAX_FRAME = 4096

CMD_READ_REGISTER = 0x03
CMD_READ_ALL = 0x06
SOURCE_PC = 0x03
TYPE_REQUEST = 0x00
TYPE_RESPONSE = 0x01


class JkFrameSpec(FrameSpec):
    marker = MARKER
    name = "jk"

    def frame_length(self, buf: bytes | bytearray) -> int | None:
        if len(buf) < 4:
            return None
        total = ((buf[2] << 8) | buf[3]) + 2
        if not MIN_FRAME <= total <= MAX_FRAME:
            raise FramingError(f"jk: length field {total - 2} gives an impossible {total}-byte frame")
        return total

    def validate(self, frame: bytes) -> None:
        if frame[-5] != END_MARK:
            raise FramingError(f"jk: end mark 0x{frame[-5]:02x} at byte {len(frame) - 5}, expected 0x68")
        received = int.from_bytes(frame[-4:], "big")
        expected = sum(frame[:-4]) & 0xFFFF
        if received != expected:
            raise ChecksumError(f"jk: checksum 0x{received:08x}, computed 0x{expected:08x}")


SPEC = JkFrameSpec()


@dataclass(frozen=True, slots=True)
class JkFrame:
    terminal: int
    command: int
    source: int
    transport_type: int
    data: bytes
    record: int


def parse_frame(frame: bytes) -> JkFrame:
    """Validate exactly one frame and split it (``data`` is the TLV body of a response)."""
    SPEC.parse_exact(frame)
    return JkFrame(
        terminal=int.from_bytes(frame[4:8], "big"),
        command=frame[8],
        source=frame[9],
        transport_type=frame[10],
        data=bytes(frame[HEADER_LEN:-TRAILER_LEN]),
        record=int.from_bytes(frame[-9:-5], "big"),
    )


def build_frame(
    command: int,
    data: bytes,
    *,
    source: int = SOURCE_PC,
    transport_type: int = TYPE_REQUEST,
    terminal: int = 0,
    record: int = 0,
) -> bytes:
    total = MIN_FRAME + len(data)
    head = (
        MARKER
        + (total - 2).to_bytes(2, "big")
        + terminal.to_bytes(4, "big")
        + bytes([command, source, transport_type])
        + data
        + record.to_bytes(4, "big")
        + bytes([END_MARK])
    )
    return head + (sum(head) & 0xFFFF).to_bytes(4, "big")


def build_read_all_request() -> bytes:
    """``4E 57 00 13 00 00 00 00 06 03 00 00 00 00 00 00 68 00 00 01 29`` (read all, from a PC)."""
    return build_frame(CMD_READ_ALL, b"\x00")
