"""Modbus-specific typed errors."""

from __future__ import annotations

from hardware.errors import DecodeError

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


class ModbusExceptionError(DecodeError):
    """The device answered with a Modbus exception response (a valid reply that refuses the request)."""

    def __init__(self, code: int, function: int, address: int, count: int) -> None:
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"modbus exception 0x{code:02x} ({name}) for function {function} at {address} (+{count})")
        self.code = code
