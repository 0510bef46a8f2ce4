"""User register maps (YAML) for vendor packs that are not SunSpec, and decoding through them.

A map names where each Sample value lives. Per field, the options Telegraf's modbus input offers::

    name: generic-48v-pack          # free text
    byte_order: big                 # default for every field: bytes inside a register (big = AB)
    word_order: big                 # default for every field: registers of a 32-bit value (big = high first)
    cells: 16                       # optional: series cells (plausibility), must match cell_voltages_v
    fields:
      voltage_v:       {address: 0, function: holding, type: uint16, scale: 0.01}
      current_a:       {address: 1, type: int16, scale: 0.1}          # + = charging (use scale < 0 to flip)
      soc_pct:         {address: 2, type: uint16}
      temperatures_c:  {address: 10, type: int16, scale: 0.1, count: 2}
      cell_voltages_v: {address: 20, type: uint16, scale: 0.001, count: 16}

``function``: holding (0x03, default) or input (0x04). ``type``: int16, uint16, int32, uint32, float32.
``byte_order``/``word_order``: big or little, per field or map-wide (big/big = ABCD, big/little = CDAB,
little/big = BADC, little/little = DCBA). ``value = raw * scale + offset``. ``count`` reads that many
consecutive values. ``voltage_v`` and ``current_a`` are required.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hardware.errors import DecodeError, SourceConfigError

Function = Literal["holding", "input"]
ValueType = Literal["int16", "uint16", "int32", "uint32", "float32"]
Order = Literal["big", "little"]

FUNCTION_CODES: dict[str, int] = {"holding": 3, "input": 4}
TYPE_WIDTH: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_STRUCT: dict[str, str] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
MAX_READ = 125  # registers per Modbus read request
MAPS_DIR = Path(__file__).parent / "maps"

FINITE = Annotated[float, Field(allow_inf_nan=False)]


class RegisterField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    function: Function = "holding"
    type: ValueType = "uint16"
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: FINITE = 1.0
    offset: FINITE = 0.0
    count: Annotated[int, Field(ge=1, le=256)] = 1

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]

    @property
    def size(self) -> int:
        return self.width * self.count

    @model_validator(mode="after")
    def _fits(self) -> RegisterField:
        if self.address + self.size > 0x10000:
            raise ValueError("field runs past register 65535")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class MapFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    voltage_v: RegisterField
    current_a: RegisterField
    soc_pct: RegisterField | None = None
    temperatures_c: RegisterField | None = None
    cell_voltages_v: RegisterField | None = None

    @model_validator(mode="after")
    def _scalars(self) -> MapFields:
        for name in ("voltage_v", "current_a", "soc_pct"):
            spec = getattr(self, name)
            if spec is not None and spec.count != 1:
                raise ValueError(f"{name} is a single value (count 1)")
        return self


class RegisterMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128)] = "register map"
    byte_order: Order = "big"
    word_order: Order = "big"
    cells: Annotated[int, Field(ge=1, le=256)] | None = None
    fields: MapFields

    @model_validator(mode="after")
    def _cells(self) -> RegisterMap:
        cv = self.fields.cell_voltages_v
        if cv is not None and self.cells is not None and cv.count != self.cells:
            raise ValueError(f"cells = {self.cells} but cell_voltages_v.count = {cv.count}")
        return self

    def named_fields(self) -> list[tuple[str, RegisterField]]:
        return [(name, spec) for name, spec in self.fields if spec is not None]


def load_map(ref: str) -> RegisterMap:
    """Load a map from a YAML file path, or by name from ``hardware/modbus/maps`` (``generic_pack``)."""
    try:
        import yaml
    except ImportError as exc:  # PyYAML is not among battwin[device]'s pinned dependencies
        raise SourceConfigError("register maps need PyYAML (pip install pyyaml)") from exc

    path = Path(ref)
    if not path.is_file():
        candidate = MAPS_DIR / (ref if ref.endswith((".yaml", ".yml")) else f"{ref}.yaml")
        if candidate.is_file():
            path = candidate
        else:
            raise SourceConfigError(f"register map {ref!r} not found (a YAML file, or one of {list_maps()})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceConfigError(f"register map {path}: cannot read: {exc}") from exc
    try:
        return RegisterMap.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SourceConfigError(f"register map {path}: {problems}") from None


def list_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


@dataclass(frozen=True, slots=True)
class ReadBlock:
    function: Function
    address: int
    count: int


def plan_reads(regmap: RegisterMap, max_gap: int = 0) -> list[ReadBlock]:
    """Group the map's registers into few reads: adjacent fields share a read; gaps (which many devices
    answer with "illegal data address") are only read over when ``max_gap`` allows."""
    blocks: list[ReadBlock] = []
    for function in ("holding", "input"):
        spans = sorted(
            (spec.address, spec.address + spec.size) for _, spec in regmap.named_fields() if spec.function == function
        )
        start = end = -1
        for lo, hi in spans:
            if start >= 0 and lo <= end + max_gap and hi - start <= MAX_READ:
                end = max(end, hi)
                continue
            if start >= 0:
                blocks.append(ReadBlock(function, start, end - start))
            start, end = lo, hi
        if start >= 0:
            blocks.append(ReadBlock(function, start, end - start))
    return blocks


def _order(regs: list[int], spec: RegisterField, regmap: RegisterMap) -> bytes:
    byte_order = spec.byte_order or regmap.byte_order
    word_order = spec.word_order or regmap.word_order
    if word_order == "little":
        regs = regs[::-1]
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    if byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode_field(spec: RegisterField, regs: list[int], regmap: RegisterMap) -> list[float]:
    """Values of one field from its registers (``spec.size`` of them, in address order)."""
    if len(regs) != spec.size:
        raise DecodeError(f"field at {spec.address}: {len(regs)} registers, need {spec.size}")
    values = []
    fmt = _STRUCT[spec.type]
    for i in range(spec.count):
        chunk = regs[i * spec.width : (i + 1) * spec.width]
        if any(not 0 <= r <= 0xFFFF for r in chunk):
            raise DecodeError(f"field at {spec.address}: register value out of 16-bit range")
        (raw,) = struct.unpack(fmt, _order(chunk, spec, regmap))
        value = raw * spec.scale + spec.offset
        if not math.isfinite(value):
            raise DecodeError(f"field at {spec.address}: value {raw!r} is not finite")
        values.append(round(value, 6))
    return values


def encode_field(spec: RegisterField, values: list[float], regmap: RegisterMap) -> list[int]:
    """Registers that decode to ``values`` (inverse of :func:`decode_field`; for emulators)."""
    regs: list[int] = []
    fmt = _STRUCT[spec.type]
    for value in values:
        raw: float | int = (value - spec.offset) / spec.scale
        if spec.type != "float32":
            bits = 8 * struct.calcsize(fmt)
            signed = spec.type.startswith("int")
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            raw = max(low, min(high, round(raw)))
        packed = struct.pack(fmt, raw)
        byte_order = spec.byte_order or regmap.byte_order
        word_order = spec.word_order or regmap.word_order
        if byte_order == "little":
            packed = b"".join(packed[i + 1 : i + 2] + packed[i : i + 1] for i in range(0, len(packed), 2))
        words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
        regs.extend(words[::-1] if word_order == "little" else words)
    return regs


@dataclass(frozen=True, slots=True)
class MapReading:
    voltage_v: float
    current_a: float
    soc_pct: float | None
    temperatures_c: tuple[float, ...]
    cell_voltages_v: tuple[float, ...] | None


def decode_map(regmap: RegisterMap, registers: Mapping[tuple[str, int], int]) -> MapReading:
    """Values from ``{(function, address): register}`` (pure; DecodeError if a register is missing)."""
    out: dict[str, list[float]] = {}
    for name, spec in regmap.named_fields():
        try:
            regs = [registers[(spec.function, spec.address + i)] for i in range(spec.size)]
        except KeyError as exc:
            raise DecodeError(f"register map: {name} needs {spec.function} register {exc.args[0][1]}") from None
        out[name] = decode_field(spec, regs, regmap)
    return MapReading(
        voltage_v=out["voltage_v"][0],
        current_a=out["current_a"][0],
        soc_pct=out["soc_pct"][0] if "soc_pct" in out else None,
        temperatures_c=tuple(out.get("temperatures_c", ())),
        cell_voltages_v=tuple(out["cell_voltages_v"]) if "cell_voltages_v" in out else None,
    )
