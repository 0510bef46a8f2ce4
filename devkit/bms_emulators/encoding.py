"""Small helpers to put simulator floats into wire integers (rounded, clamped to the field's range)."""

from __future__ import annotations

import math


def clamp_int(value: float, low: int, high: int) -> int:
    if not math.isfinite(value):
        return low
    return max(low, min(high, round(value)))


def u8(value: float) -> int:
    return clamp_int(value, 0, 0xFF)


def u16(value: float) -> int:
    return clamp_int(value, 0, 0xFFFF)


def i16(value: float) -> int:
    return clamp_int(value, -0x8000, 0x7FFF)


def u32(value: float) -> int:
    return clamp_int(value, 0, 0xFFFFFFFF)
