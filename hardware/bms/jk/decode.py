"""JK "4E 57" status decoding: a pure function from the TLV body (or a whole frame) to values.

The body is a sequence of ``<tag> <value>``; every tag has a fixed value length except 0x79 (cell
voltages: a length byte, then 3 bytes per cell: index, u16 mV). Tags that are known but not needed
are skipped by their length; a tag whose length is not known ends decoding with DecodeError (the rest
of the body cannot be found). Tag list and lengths: JK "RS485/TTL protocol" document as reproduced in
syssi/esphome-jk-bms (docs/ and components/jk_bms/jk_bms.cpp).

Encodings that the sources disagree on (see /work/shared/bms-frames/README.txt):

* current 0x84, protocol version (tag 0xC0) 1: bit 15 set = charging, bits 0-14 = |I| in 10 mA
  (esphome-jk-bms, batmon-ha, dbus-serialbattery agree). Protocol version 0: offset encoding
  ``(10000 - raw) * 0.01`` A (JK document; discharging negative). A frame without tag 0xC0 is read
  with the version-1 encoding, the one every known capture uses.
* temperatures 0x80-0x82: raw <= 100 is degrees C, raw > 100 is ``-(raw - 100)`` (JK document:
  "101 is -1 degree, 100 benchmark"); esphome-jk-bms reads 101 as -2 C instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from hardware.bms.jk.framing import HEADER_LEN, SPEC, TRAILER_LEN, TYPE_REQUEST, parse_frame
from hardware.errors import DecodeError

TAG_CELLS = 0x79

#: value length of every fixed-size tag
TAG_LENGTHS: dict[int, int] = {
    0x80: 2, 0x81: 2, 0x82: 2, 0x83: 2, 0x84: 2, 0x85: 1, 0x86: 1, 0x87: 2, 0x89: 4, 0x8A: 2,
    0x8B: 2, 0x8C: 2, 0x8E: 2, 0x8F: 2, 0x90: 2, 0x91: 2, 0x92: 2, 0x93: 2, 0x94: 2, 0x95: 2,
    0x96: 2, 0x97: 2, 0x98: 2, 0x99: 2, 0x9A: 2, 0x9B: 2, 0x9C: 2, 0x9D: 1, 0x9E: 2, 0x9F: 2,
    0xA0: 2, 0xA1: 2, 0xA2: 2, 0xA3: 2, 0xA4: 2, 0xA5: 2, 0xA6: 2, 0xA7: 2, 0xA8: 2, 0xA9: 1,
    0xAA: 4, 0xAB: 1, 0xAC: 1, 0xAD: 2, 0xAE: 1, 0xAF: 1, 0xB0: 2, 0xB1: 1, 0xB2: 10, 0xB3: 1,
    0xB4: 8, 0xB5: 4, 0xB6: 4, 0xB7: 15, 0xB8: 1, 0xB9: 4, 0xBA: 24, 0xBB: 1, 0xBC: 1, 0xBD: 1,
    0xBE: 2, 0xBF: 2, 0xC0: 1,
}  # fmt: skip

#: tags whose value is text (kept as bytes, decoded as ASCII)
TEXT_TAGS = frozenset({0xB2, 0xB4, 0xB5, 0xB7, 0xBA})

BATTERY_TYPES = {0: "Lithium Iron Phosphate", 1: "Ternary Lithium", 2: "Lithium Titanate"}


@dataclass(frozen=True, slots=True)
class JkStatus:
    cell_voltages_v: tuple[float, ...]
    pack_voltage_v: float | None
    current_a: float | None
    soc_pct: int | None
    mosfet_temperature_c: int | None
    temperatures_c: tuple[int, ...]  # battery probes (tags 0x81, 0x82), limited to the sensor count
    temperature_sensor_count: int | None
    cycles: int | None
    total_charge_throughput_ah: int | None
    cell_count: int | None
    errors_bitmask: int | None
    operation_mode_bitmask: int | None  # 0x8C: bit0 charging MOS on, bit1 discharging MOS on, bit2 balancing
    charging_mosfet_on: bool | None
    discharging_mosfet_on: bool | None
    balancing_active: bool | None
    capacity_ah: int | None
    balancing_start_voltage_v: float | None
    balancing_delta_voltage_v: float | None
    low_soc_alarm_pct: int | None
    charging_switch: bool | None
    discharging_switch: bool | None
    balancing_switch: bool | None
    battery_type: str | None
    device_id: str | None
    production_date: str | None
    total_runtime_min: int | None
    software_version: str | None
    manufacturer: str | None
    protocol_version: int | None


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip("\x00")


def _temperature(raw: int) -> int:
    return raw if raw <= 100 else -(raw - 100)


def decode_current(raw: int, protocol_version: int | None) -> float:
    if protocol_version == 0:
        return round((10000 - raw) * 0.01, 2) + 0.0
    magnitude = (raw & 0x7FFF) * 0.01
    return round(magnitude if raw & 0x8000 else -magnitude, 2) + 0.0


_SIZES: list[int] = [-1] * 256
for _tag, _size in TAG_LENGTHS.items():
    _SIZES[_tag] = _size
_CODES = {1: "B", 2: "H", 4: "I"}
_MV_TO_V = (1000).__rtruediv__  # mV -> V, exactly v / 1000
_LAYOUT_CACHE_MAX = 32
#: (cell block length, body length) -> (struct for the whole body, its tag sequence)
_layouts: dict[tuple[int, int], tuple[struct.Struct, tuple[int, ...]]] = {}


def _parse_slow(body: bytes) -> tuple[dict[int, int | bytes], tuple[float, ...], str | None]:
    """Walk the body tag by tag; also return the struct format of this layout (None if no fast form)."""
    values: dict[int, int | bytes] = {}
    cells: tuple[float, ...] = ()
    sizes = _SIZES
    fmt = [">"]
    i = 0
    end = len(body)
    while i < end:
        tag = body[i]
        if tag == TAG_CELLS:
            if i + 1 >= end:
                raise DecodeError("jk: cell block 0x79 without its length byte")
            n = body[i + 1]
            if n % 3:
                raise DecodeError(f"jk: cell block length {n} is not a multiple of 3")
            start = i + 2
            i = start + n
            if i > end:
                raise DecodeError(f"jk: cell block of {n} bytes runs past the end of the body")
            block = body[start:i]
            cells = tuple(((block[j + 1] << 8) | block[j + 2]) / 1000 for j in range(0, n, 3))
            fmt.append("BB" + "BH" * (n // 3) if start == 2 else "?")
            continue
        size = sizes[tag]
        if size < 0:
            raise DecodeError(f"jk: unknown tag 0x{tag:02x} at body offset {i}; cannot skip it")
        start = i + 1
        i = start + size
        if i > end:
            raise DecodeError(f"jk: tag 0x{tag:02x} needs {size} bytes, body ends after {end - start}")
        if tag in TEXT_TAGS:
            values[tag] = body[start:i]
            fmt.append(f"B{size}s")
        else:
            values[tag] = int.from_bytes(body[start:i], "big")
            fmt.append("B" + _CODES.get(size, "?"))
    layout = "".join(fmt)
    return values, cells, None if "?" in layout else layout


def parse_tlv(body: bytes) -> tuple[dict[int, int | bytes], tuple[float, ...]]:
    """Split a TLV body into ``{tag: value}`` (ints, or bytes for text tags) and the cell voltages.

    Real devices send the same tag sequence every time, so a layout seen once is compiled into one
    ``struct`` and later bodies of the same shape are unpacked in one call (their tag bytes are
    checked, so a body with another sequence falls back to the tag-by-tag walk).
    """
    key = (body[1] if len(body) > 1 and body[0] == TAG_CELLS else -1, len(body))
    cached = _layouts.get(key)
    if cached is not None:
        layout, tags = cached
        raw = layout.unpack(body)
        skip = 2 + 2 * (key[0] // 3) if key[0] >= 0 else 0
        if raw[skip::2] == tags:
            cells = tuple(map(_MV_TO_V, raw[3:skip:2])) if skip else ()
            return dict(zip(tags, raw[skip + 1 :: 2], strict=True)), cells
    values, cells, fmt = _parse_slow(body)
    if fmt is not None and len(_layouts) < _LAYOUT_CACHE_MAX:
        _layouts[key] = (struct.Struct(fmt), tuple(values))
    return values, cells


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _opt_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip("\x00")
    return None


def decode_status_payload(body: bytes) -> JkStatus:
    """Decode the TLV body of a read-all (0x06) or register-read (0x03) response."""
    values, cells = parse_tlv(body)
    ints = cast(dict[int, int], values)  # text tags are only ever read through _opt_text
    get = ints.get
    version = get(0xC0)
    sensors = get(0x86)
    t1, t2 = get(0x81), get(0x82)
    if t1 is not None and t2 is not None:
        temps: tuple[int, ...] = (_temperature(t1), _temperature(t2))
    else:
        temps = tuple(_temperature(t) for t in (t1, t2) if t is not None)
    if sensors is not None and sensors < len(temps):
        temps = temps[:sensors]
    raw_current = get(0x84)
    voltage = get(0x83)
    mosfet = get(0x80)
    bal_start = get(0x9B)
    bal_delta = get(0x9C)
    bat_type = get(0xAF)
    mode = get(0x8C)
    return JkStatus(
        cell_voltages_v=cells,
        pack_voltage_v=None if voltage is None else round(voltage * 0.01, 2),
        current_a=None if raw_current is None else decode_current(raw_current, version),
        soc_pct=get(0x85),
        mosfet_temperature_c=None if mosfet is None else _temperature(mosfet),
        temperatures_c=temps,
        temperature_sensor_count=sensors,
        cycles=get(0x87),
        total_charge_throughput_ah=get(0x89),
        cell_count=get(0x8A),
        errors_bitmask=get(0x8B),
        operation_mode_bitmask=mode,
        charging_mosfet_on=None if mode is None else bool(mode & 0x01),
        discharging_mosfet_on=None if mode is None else bool(mode & 0x02),
        balancing_active=None if mode is None else bool(mode & 0x04),
        capacity_ah=get(0xAA),
        balancing_start_voltage_v=None if bal_start is None else bal_start / 1000,
        balancing_delta_voltage_v=None if bal_delta is None else bal_delta / 1000,
        low_soc_alarm_pct=get(0xB1),
        charging_switch=_flag(get(0xAB)),
        discharging_switch=_flag(get(0xAC)),
        balancing_switch=_flag(get(0x9D)),
        battery_type=None if bat_type is None else (BATTERY_TYPES.get(bat_type) or f"unknown ({bat_type})"),
        device_id=_opt_text(values.get(0xB4)),
        production_date=_opt_text(values.get(0xB5)),
        total_runtime_min=get(0xB6),
        software_version=_opt_text(values.get(0xB7)),
        manufacturer=_opt_text(values.get(0xBA)),
        protocol_version=version,
    )


@dataclass(frozen=True, slots=True)
class JkRequest:
    command: int
    frame_source: int
    register: int | None  # 0x00 = all, for read-all; None when the request carries no data


def decode_request(frame: bytes) -> JkRequest:
    """Validate and describe a request frame (transport type 0)."""
    parsed = parse_frame(frame)
    if parsed.transport_type != TYPE_REQUEST:
        raise DecodeError(f"jk: transport type {parsed.transport_type} is not a request")
    return JkRequest(
        command=parsed.command, frame_source=parsed.source, register=parsed.data[0] if parsed.data else None
    )


def decode_frame(frame: bytes) -> JkStatus:
    """Validate exactly one response frame and decode its body. Raises ProtocolError subclasses only."""
    SPEC.parse_exact(frame)
    if frame[10] == TYPE_REQUEST:
        raise DecodeError("jk: this is a request frame (transport type 0), not a response")
    return decode_status_payload(frame[HEADER_LEN:-TRAILER_LEN])
