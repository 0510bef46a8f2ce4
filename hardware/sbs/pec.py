"""SMBus Packet Error Code: CRC-8, polynomial x^8 + x^2 + x + 1 (0x07), initial value 0.

For a read-word transaction the PEC covers ``addr<<1 | 0, command, addr<<1 | 1, data low, data high``.
On Linux the i2c-dev driver checks PEC itself when it is enabled (``SMBus.pec = True``) and fails the
read with EBADMSG; this module is used to build and check PEC bytes where we see them (emulator, CLI).
"""

from __future__ import annotations

from collections.abc import Iterable


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc8(data: Iterable[int]) -> int:
    crc = 0
    for byte in data:
        crc = _TABLE[crc ^ byte]
    return crc


def read_word_pec(address: int, command: int, low: int, high: int) -> int:
    """PEC of an SMBus read-word transaction as the device sends it."""
    return crc8((address << 1, command, (address << 1) | 1, low, high))
