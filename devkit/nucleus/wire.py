"""AWS event-stream framing and the RPC conventions Greengrass IPC puts on top of it.

A message on the wire::

    u32 total length | u32 headers length | u32 CRC32(first 8 bytes)     (the 12-byte prelude)
    headers                                                               (headers length bytes)
    payload                                                               (the rest)
    u32 CRC32(everything before)

All integers are big-endian; CRC32 is the IEEE polynomial (``zlib.crc32``). A header is ``u8 name length,
name, u8 value type, value`` where the value's encoding depends on its type (see :class:`HeaderType`).

The RPC layer (``aws-c-event-stream``'s rpc client, which ``awscrt.eventstream.rpc`` wraps) adds int32
headers ``:message-type``, ``:message-flags`` and ``:stream-id`` to every message, and the string header
``operation`` to the first message of a stream. Stream 0 carries protocol messages (CONNECT, CONNECT_ACK,
PING ...); application messages and errors travel on client-allocated, strictly increasing stream ids.

This module is the emulator's own implementation of the format (awscrt only exposes it natively).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from enum import IntEnum

PRELUDE_LEN = 12
CRC_LEN = 4
MIN_MESSAGE_LEN = PRELUDE_LEN + CRC_LEN
#: aws-c-event-stream's limits
MAX_MESSAGE_LEN = 16 * 1024 * 1024
MAX_HEADERS_LEN = 128 * 1024

MESSAGE_TYPE = ":message-type"
MESSAGE_FLAGS = ":message-flags"
STREAM_ID = ":stream-id"
OPERATION = "operation"
CONTENT_TYPE = ":content-type"
SERVICE_MODEL_TYPE = "service-model-type"
VERSION = ":version"
JSON = "application/json"
RPC_VERSION = "0.1.0"


class WireError(ValueError):
    """The bytes are not a valid event-stream message (bad length, CRC, header)."""


class HeaderType(IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTE_BUF = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


class MessageType(IntEnum):
    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


class MessageFlag:
    NONE = 0
    CONNECTION_ACCEPTED = 0x1
    TERMINATE_STREAM = 0x2


HeaderValue = bool | int | bytes | str | uuid.UUID

_INT_FORMATS = {
    HeaderType.BYTE: ">b",
    HeaderType.INT16: ">h",
    HeaderType.INT32: ">i",
    HeaderType.INT64: ">q",
    HeaderType.TIMESTAMP: ">q",
}


@dataclass(frozen=True)
class Header:
    name: str
    type: HeaderType
    value: HeaderValue

    @classmethod
    def string(cls, name: str, value: str) -> Header:
        return cls(name, HeaderType.STRING, value)

    @classmethod
    def int32(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT32, value)

    def encode(self) -> bytes:
        name = self.name.encode("utf-8")
        if not 0 < len(name) < 256:
            raise WireError(f"header name {self.name!r} must be 1..255 bytes")
        out = bytearray([len(name)]) + name + bytes([int(self.type)])
        t = self.type
        v = self.value
        if t in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
            pass
        elif t in _INT_FORMATS:
            if not isinstance(v, int) or isinstance(v, bool):
                raise WireError(f"header {self.name!r}: {t.name} needs an int")
            try:
                out += struct.pack(_INT_FORMATS[t], v)
            except struct.error as exc:
                raise WireError(f"header {self.name!r}: {exc}") from None
        elif t in (HeaderType.BYTE_BUF, HeaderType.STRING):
            raw = v.encode("utf-8") if isinstance(v, str) else v
            if not isinstance(raw, bytes | bytearray):
                raise WireError(f"header {self.name!r}: {t.name} needs bytes or str")
            if len(raw) > 0xFFFF:
                raise WireError(f"header {self.name!r}: value longer than 65535 bytes")
            out += struct.pack(">H", len(raw)) + bytes(raw)
        elif t is HeaderType.UUID:
            if not isinstance(v, uuid.UUID):
                raise WireError(f"header {self.name!r}: UUID needs a uuid.UUID")
            out += v.bytes
        else:  # pragma: no cover - IntEnum is exhaustive
            raise WireError(f"unknown header type {t}")
        return bytes(out)


def decode_headers(buf: bytes) -> list[Header]:
    headers: list[Header] = []
    pos = 0
    end = len(buf)
    while pos < end:
        name_len = buf[pos]
        pos += 1
        if name_len == 0 or pos + name_len + 1 > end:
            raise WireError("truncated or empty header name")
        try:
            name = buf[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("header name is not UTF-8") from None
        pos += name_len
        try:
            htype = HeaderType(buf[pos])
        except ValueError:
            raise WireError(f"header {name!r}: unknown value type {buf[pos]}") from None
        pos += 1
        value: HeaderValue
        if htype is HeaderType.BOOL_TRUE:
            value = True
        elif htype is HeaderType.BOOL_FALSE:
            value = False
        elif htype in _INT_FORMATS:
            fmt = _INT_FORMATS[htype]
            size = struct.calcsize(fmt)
            if pos + size > end:
                raise WireError(f"header {name!r}: truncated value")
            (value,) = struct.unpack(fmt, buf[pos : pos + size])
            pos += size
        elif htype in (HeaderType.BYTE_BUF, HeaderType.STRING):
            if pos + 2 > end:
                raise WireError(f"header {name!r}: truncated length")
            (length,) = struct.unpack(">H", buf[pos : pos + 2])
            pos += 2
            if pos + length > end:
                raise WireError(f"header {name!r}: truncated value")
            raw = bytes(buf[pos : pos + length])
            pos += length
            if htype is HeaderType.STRING:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise WireError(f"header {name!r}: string is not UTF-8") from None
            else:
                value = raw
        else:  # UUID
            if pos + 16 > end:
                raise WireError(f"header {name!r}: truncated UUID")
            value = uuid.UUID(bytes=bytes(buf[pos : pos + 16]))
            pos += 16
        headers.append(Header(name, htype, value))
    return headers


@dataclass(frozen=True)
class Message:
    headers: tuple[Header, ...]
    payload: bytes

    def get(self, name: str) -> HeaderValue | None:
        """The first header called ``name`` (case-insensitive, as aws-c-event-stream compares)."""
        lowered = name.lower()
        for h in self.headers:
            if h.name.lower() == lowered:
                return h.value
        return None

    def get_str(self, name: str) -> str | None:
        value = self.get(name)
        return value if isinstance(value, str) else None

    def get_int(self, name: str) -> int | None:
        value = self.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def message_type(self) -> int | None:
        return self.get_int(MESSAGE_TYPE)

    @property
    def flags(self) -> int:
        return self.get_int(MESSAGE_FLAGS) or 0

    @property
    def stream_id(self) -> int | None:
        return self.get_int(STREAM_ID)

    def encode(self) -> bytes:
        return encode_message(self.headers, self.payload)


def encode_message(headers: tuple[Header, ...] | list[Header], payload: bytes = b"") -> bytes:
    header_bytes = b"".join(h.encode() for h in headers)
    if len(header_bytes) > MAX_HEADERS_LEN:
        raise WireError("headers exceed 128 KiB")
    total = PRELUDE_LEN + len(header_bytes) + len(payload) + CRC_LEN
    if total > MAX_MESSAGE_LEN:
        raise WireError("message exceeds 16 MiB")
    prelude = struct.pack(">II", total, len(header_bytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + header_bytes + payload
    return body + struct.pack(">I", zlib.crc32(body))


def rpc_message(
    message_type: MessageType,
    stream_id: int,
    *,
    flags: int = MessageFlag.NONE,
    headers: list[Header] | None = None,
    payload: bytes = b"",
) -> bytes:
    """An RPC message: the caller's headers plus the three int32 RPC headers, encoded."""
    all_headers = [
        *(headers or []),
        Header.int32(MESSAGE_TYPE, int(message_type)),
        Header.int32(MESSAGE_FLAGS, flags),
        Header.int32(STREAM_ID, stream_id),
    ]
    return encode_message(all_headers, payload)


class MessageDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get the complete messages back."""

    def __init__(self, max_message_len: int | None = None) -> None:
        self._buf = bytearray()
        #: a frame longer than this stops decoding; its length is kept in ``oversized``
        self.max_message_len = max_message_len
        self.oversized: int | None = None
        #: the longest frame decoded so far (bytes, prelude to CRC)
        self.largest = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= PRELUDE_LEN and self.oversized is None:
            total, headers_len, prelude_crc = struct.unpack(">III", self._buf[:PRELUDE_LEN])
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                raise WireError("prelude CRC mismatch")
            if total < MIN_MESSAGE_LEN or total > MAX_MESSAGE_LEN:
                raise WireError(f"bad message length {total}")
            if self.max_message_len is not None and total > self.max_message_len:
                self.oversized = total  # known from the prelude, as a fixed receive buffer knows it
                break
            if headers_len > MAX_HEADERS_LEN or headers_len > total - MIN_MESSAGE_LEN:
                raise WireError(f"bad headers length {headers_len}")
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            self.largest = max(self.largest, total)
            (message_crc,) = struct.unpack(">I", frame[-CRC_LEN:])
            if zlib.crc32(frame[:-CRC_LEN]) != message_crc:
                raise WireError("message CRC mismatch")
            headers = decode_headers(frame[PRELUDE_LEN : PRELUDE_LEN + headers_len])
            payload = frame[PRELUDE_LEN + headers_len : -CRC_LEN]
            out.append(Message(tuple(headers), payload))
        return out
