"""Typed errors every battery source raises. Nothing else may escape a driver's ``poll``."""

from __future__ import annotations

# the base and the URL/option error are defined with the source URL in the schema layer (a malformed URL is
# refused there); this module is the whole hierarchy drivers raise from
from schema.source_settings import SourceConfigError, SourceError

__all__ = [
    "ChecksumError",
    "DataFileError",
    "DecodeError",
    "FramingError",
    "ImplausibleValueError",
    "ProtocolError",
    "SourceConfigError",
    "SourceError",
    "SourceExhausted",
    "SourceTimeout",
    "SourceUnavailable",
]


class SourceUnavailable(SourceError):
    """The device or file cannot be opened (port missing, permission denied, connection refused)."""


class SourceTimeout(SourceError):
    """The device did not answer in time."""


class ProtocolError(SourceError):
    """Bytes on the wire do not form a valid frame or reply."""


class FramingError(ProtocolError):
    """Missing start/end marker, wrong length, truncated frame, garbage."""


class ChecksumError(ProtocolError):
    """The frame is complete but its checksum / CRC does not match."""


class DecodeError(ProtocolError):
    """The frame is well formed but its content cannot be decoded (unknown register, bad field)."""


class ImplausibleValueError(SourceError):
    """A frame decoded to a value outside physical limits (e.g. 400 V on a 4S pack)."""


class DataFileError(SourceError):
    """A recorded input (a replayed log) is malformed: not worth retrying, the source stops here."""


class SourceExhausted(SourceError):
    """A finite source (a replayed log) has no more samples."""
