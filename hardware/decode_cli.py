"""``battwin decode PROTOCOL HEX [HEX ...]``: decode captured frames and print one JSON object per frame.

Protocols: ``jbd``, ``daly``, ``jk`` (whole frames, requests or replies), ``sbs`` (one read-word
transaction per HEX: command, data low, data high [, PEC]), ``sunspec802`` (the 64 registers of a
model 802 block, big-endian, from its ID register). Every key carries its unit (``pack_voltage_v``,
``current_a``, ``soc_pct``, ``cell_voltages_v``, ``temperatures_c`` ...). A frame that fails prints
``{"error": "<type>", "message": "..."}`` and makes the exit status 1. Daly 0x95 (cell voltages) and
0x96 (temperatures) frames passed together are merged into one object (trimmed to the cell/sensor
count of a 0x94 frame passed in the same call). A 0x95 / 0x96 frame that is not part of a whole reply (one
frame alone, or frames with gaps) is printed by itself with the cell (sensor) numbers it carries: frame n
of 0x95 carries cells 3n-2..3n, of 0x96 sensors 7n-6..7n. Spaces, colons and dashes inside HEX are ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hardware.errors import ProtocolError

if TYPE_CHECKING:
    from hardware.bms.daly.decode import DalyCellVoltageFrame, DalyTemperatureFrame

PROTOCOLS = ("jbd", "daly", "jk", "sbs", "sunspec802")

Result = dict[str, Any]


def _hex(text: str) -> bytes:
    cleaned = "".join(ch for ch in text if ch not in " :-_\t\n")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    return bytes.fromhex(cleaned)


def _values(obj: Any) -> Result:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)


def _error(exc: BaseException) -> Result:
    return {"error": type(exc).__name__, "message": str(exc)}


def _decode_jbd(frame: bytes) -> Result:
    from hardware.bms.jbd.decode import decode_request, decode_response
    from hardware.bms.jbd.framing import READ, WRITE

    if len(frame) > 1 and frame[1] in (READ, WRITE):
        return {"protocol": "jbd", "direction": "request", **_values(decode_request(frame))}
    values = _values(decode_response(frame))  # validates the frame before its bytes are read
    return {"protocol": "jbd", "direction": "response", "register": f"0x{frame[1]:02x}", **values}


def _decode_jk(frame: bytes) -> Result:
    from hardware.bms.jk.decode import decode_frame, decode_request
    from hardware.bms.jk.framing import TYPE_REQUEST

    if len(frame) > 10 and frame[10] == TYPE_REQUEST:
        return {"protocol": "jk", "direction": "request", **_values(decode_request(frame))}
    return {"protocol": "jk", "direction": "response", **_values(decode_frame(frame))}


def _decode_sunspec(frame: bytes) -> Result:
    from hardware.errors import FramingError
    from hardware.modbus.sunspec import decode_model_802

    if len(frame) % 2:
        raise FramingError(f"sunspec802: {len(frame)} bytes is not a whole number of registers")
    registers = [int.from_bytes(frame[i : i + 2], "big") for i in range(0, len(frame), 2)]
    return {"protocol": "sunspec802", **_values(decode_model_802(registers))}


def _daly_per_frame(data_id: int, frame: DalyCellVoltageFrame | DalyTemperatureFrame, count: int | None) -> Result:
    """One 0x95 / 0x96 frame on its own (a fragment of a multi-frame reply): the cell or sensor numbers it
    carries with their values, as peers that decode frame by frame show it."""
    from hardware.bms.daly.decode import DalyCellVoltageFrame, frame_cells, frame_sensors

    if isinstance(frame, DalyCellVoltageFrame):
        cells = frame_cells(frame, count)
        return {"protocol": "daly", "data_id": f"0x{data_id:02x}", "frame_number": frame.frame_number,
                "cells": list(cells), "cell_voltages_v": list(cells.values())}  # fmt: skip
    sensors = frame_sensors(frame, count)
    return {"protocol": "daly", "data_id": f"0x{data_id:02x}", "frame_number": frame.frame_number,
            "sensors": list(sensors), "temperatures_c": list(sensors.values())}  # fmt: skip


def _run_daly(frames: list[bytes | BaseException], current_sign: int) -> list[Result]:
    from hardware.bms.daly.decode import (
        CELLS_PER_FRAME,
        ID_CELL_VOLTAGES,
        ID_TEMPERATURES,
        TEMPS_PER_FRAME,
        DalyCellVoltageFrame,
        DalyStatusInfo,
        DalyTemperatureFrame,
        decode_payload,
        merge_cell_voltages,
        merge_temperatures,
        missing_frames,
    )
    from hardware.bms.daly.framing import HOST_RS485, HOST_UART, parse_frame

    results: list[Result | None] = []
    # the 0x95 / 0x96 frames with the index of the placeholder each one holds in ``results``
    series: dict[int, list[tuple[int, DalyCellVoltageFrame | DalyTemperatureFrame]]] = {
        ID_CELL_VOLTAGES: [],
        ID_TEMPERATURES: [],
    }
    status: DalyStatusInfo | None = None
    for item in frames:
        if isinstance(item, BaseException):
            results.append(_error(item))
            continue
        try:
            parsed = parse_frame(item)
            if parsed.address in (HOST_RS485, HOST_UART) and not any(parsed.data):
                results.append({"protocol": "daly", "direction": "request", "data_id": f"0x{parsed.data_id:02x}",
                                "host_address": f"0x{parsed.address:02x}"})  # fmt: skip
                continue
            values = decode_payload(parsed.data_id, parsed.data, current_sign)
        except ProtocolError as exc:
            results.append(_error(exc))
            continue
        if isinstance(values, DalyCellVoltageFrame | DalyTemperatureFrame):
            series[parsed.data_id].append((len(results), values))
            results.append(None)
            continue
        if isinstance(values, DalyStatusInfo):
            status = values
        results.append({"protocol": "daly", "data_id": f"0x{parsed.data_id:02x}", **_values(values)})

    for data_id, got in series.items():
        if not got:
            continue
        cells = data_id == ID_CELL_VOLTAGES
        count = (status.cell_count if cells else status.temperature_sensor_count) if status else None
        numbers = [f.frame_number for _, f in got]
        per_frame = CELLS_PER_FRAME if cells else TEMPS_PER_FRAME
        if missing_frames(numbers, per_frame, count) or (len(got) == 1 and count is None):
            # not a whole reply (one frame, or frames with gaps): each frame says what it carries
            for index, frame in got:
                results[index] = _daly_per_frame(data_id, frame, count)
            continue
        # a whole multi-frame reply: merged into the place of its first frame
        try:
            if cells:
                merged: Result = {"cell_voltages_v": list(merge_cell_voltages(
                    [f for _, f in got if isinstance(f, DalyCellVoltageFrame)], count))}  # fmt: skip
            else:
                merged = {"temperatures_c": list(merge_temperatures(
                    [f for _, f in got if isinstance(f, DalyTemperatureFrame)], count))}  # fmt: skip
            results[got[0][0]] = {"protocol": "daly", "data_id": f"0x{data_id:02x}", "frames": sorted(set(numbers)),
                                  **merged}  # fmt: skip
        except ProtocolError as exc:
            results[got[0][0]] = _error(exc)
    return [r for r in results if r is not None]


def _run_sbs(frames: list[bytes | BaseException], address: int) -> list[Result]:
    from hardware.sbs.registers import BATTERY_MODE, CAPACITY_MODE_BIT, decode_transaction

    energy = False
    results: list[Result] = []
    for item in frames:
        if isinstance(item, BaseException):
            results.append(_error(item))
            continue
        try:
            values = decode_transaction(item, address, energy)
        except ProtocolError as exc:
            results.append(_error(exc))
            continue
        if item[0] == BATTERY_MODE:
            energy = bool((item[1] | item[2] << 8) & CAPACITY_MODE_BIT)
        results.append({"protocol": "sbs", **values})
    return results


def _run_simple(frames: list[bytes | BaseException], decoder: Callable[[bytes], Result]) -> list[Result]:
    results: list[Result] = []
    for item in frames:
        if isinstance(item, BaseException):
            results.append(_error(item))
            continue
        try:
            results.append(decoder(item))
        except ProtocolError as exc:
            results.append(_error(exc))
    return results


def decode_frames(protocol: str, hex_frames: list[str], current_sign: int = 1, address: int = 0x0B) -> list[Result]:
    """Decode each HEX string; one result dict per frame (merged for Daly multi-frame replies)."""
    frames: list[bytes | BaseException] = []
    for text in hex_frames:
        try:
            frames.append(_hex(text))
        except ValueError as exc:
            frames.append(ValueError(f"not hexadecimal: {text[:40]!r} ({exc})"))
    if protocol == "daly":
        return _run_daly(frames, current_sign)
    if protocol == "sbs":
        return _run_sbs(frames, address)
    decoders: dict[str, Callable[[bytes], Result]] = {
        "jbd": _decode_jbd,
        "jk": _decode_jk,
        "sunspec802": _decode_sunspec,
    }
    return _run_simple(frames, decoders[protocol])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="battwin decode", description="Decode captured BMS frames to JSON.")
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("frames", nargs="+", metavar="HEX")
    parser.add_argument("--current-sign", type=int, choices=(1, -1), default=1, help="daly: 0x90 current sign")
    parser.add_argument("--address", type=lambda s: int(s, 0), default=0x0B, help="sbs: device address (PEC)")
    return parser


def main_decode(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on bad usage; return its status instead
        return int(exc.code or 0)
    results = decode_frames(args.protocol, args.frames, args.current_sign, args.address)
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_decode(sys.argv[1:]))
