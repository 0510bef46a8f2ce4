"""Wire messages of battwin (pydantic v2, JSON, versioned).

Every message the device publishes is wrapped in an :class:`Envelope` that carries a unique ``id`` (the
cloud drops duplicates by it), the thing name, the message kind, the schema version and whether the data
is simulated. Conventions, stated once:

* time stamps are Unix seconds (float, UTC);
* current is positive while **charging**, negative while discharging;
* every unit is in the field name (``voltage_v``, ``current_a``, ``temperatures_c`` ...).

Floats must be finite: NaN and infinity are rejected at the boundary, never stored or sent.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import secrets
import zlib
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION: Literal[1] = 1

# physical bounds of a reading (anything outside is a decoding error, not a battery)
TS_RANGE = (0.0, 32_503_680_000.0)  # up to the year 3000
VOLTAGE_RANGE = (-1.0, 2000.0)
CURRENT_RANGE = (-10_000.0, 10_000.0)
TEMPERATURE_RANGE = (-80.0, 200.0)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Timestamp = Annotated[float, Field(allow_inf_nan=False, ge=TS_RANGE[0], le=TS_RANGE[1])]
Voltage = Annotated[float, Field(allow_inf_nan=False, ge=VOLTAGE_RANGE[0], le=VOLTAGE_RANGE[1])]
Current = Annotated[float, Field(allow_inf_nan=False, ge=CURRENT_RANGE[0], le=CURRENT_RANGE[1])]
Temperature = Annotated[float, Field(allow_inf_nan=False, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])]
Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class Message(BaseModel):
    """Base of every battwin message: strict about unknown fields and non-finite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Sample(Message):
    """One reading of a battery (pack level, optionally per cell)."""

    ts: Timestamp
    voltage_v: Voltage
    current_a: Current = Field(description="positive = charging")
    temperatures_c: tuple[Temperature, ...] = ()
    soc_pct: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=100.0)] | None = None
    #: battwin's own SoC (device_agent.soc), computed independently of the BMS's ``soc_pct``
    soc_est_pct: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=100.0)] | None = None
    cell_voltages_v: tuple[Annotated[float, Field(allow_inf_nan=False, ge=-1.0, le=10.0)], ...] | None = None
    source_id: Ident
    simulated: bool = False

    @property
    def temperature_c(self) -> float | None:
        """Mean of the reported temperatures, or None when the source has no sensor."""
        if not self.temperatures_c:
            return None
        return sum(self.temperatures_c) / len(self.temperatures_c)


CycleKind = Literal["charge", "discharge"]


class CycleRecord(Message):
    """One charge or discharge segment found by the cycle tracker from samples alone.

    ``capacity_ah`` is set on discharges that reached the cut-off voltage: the charge delivered from the
    start of the discharge down to the first crossing of ``cutoff_voltage_v``. A discharge that ended
    before the cut-off (partial) has ``complete = False`` and no capacity.
    """

    index: Annotated[int, Field(ge=0)]
    kind: CycleKind
    start_ts: Timestamp
    end_ts: Timestamp
    duration_s: Annotated[float, Field(allow_inf_nan=False, ge=0.0)]
    charge_ah: Annotated[float, Field(allow_inf_nan=False, ge=0.0)] = Field(
        description="charge moved in the segment (absolute value)"
    )
    energy_wh: Annotated[float, Field(allow_inf_nan=False, ge=0.0)]
    capacity_ah: Annotated[float, Field(allow_inf_nan=False, ge=0.0)] | None = None
    complete: bool
    cutoff_voltage_v: Voltage | None = None
    start_voltage_v: Voltage
    end_voltage_v: Voltage
    min_voltage_v: Voltage
    max_voltage_v: Voltage
    mean_current_a: Current
    mean_temperature_c: Temperature | None = None
    max_temperature_c: Temperature | None = None
    resistance_ohm: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=100.0)] | None = None
    n_samples: Annotated[int, Field(ge=1)]
    gaps: Annotated[int, Field(ge=0)] = 0
    source_id: Ident
    simulated: bool = False


HealthMethod = Literal["physics", "hybrid", "persistence"]


class ForecastPoint(Message):
    """One point of the SoH trajectory ahead, with its 80 % central interval (absent in older messages)."""

    cycle: FiniteFloat
    soh: FiniteFloat
    soh_lo: FiniteFloat | None = None
    soh_hi: FiniteFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ForecastPoint:
        if self.soh_lo is not None and self.soh_lo > self.soh:
            raise ValueError(f"soh_lo {self.soh_lo} is above soh {self.soh}")
        if self.soh_hi is not None and self.soh_hi < self.soh:
            raise ValueError(f"soh_hi {self.soh_hi} is below soh {self.soh}")
        return self


RulCycles = Annotated[float, Field(allow_inf_nan=False, ge=0.0)]


class Health(Message):
    """State of health and remaining useful life after a discharge cycle."""

    ts: Timestamp
    cycle_index: Annotated[int, Field(ge=0)]
    equivalent_cycles: Annotated[float, Field(allow_inf_nan=False, ge=0.0)]
    capacity_ah: Annotated[float, Field(allow_inf_nan=False, ge=0.0)]
    initial_capacity_ah: Annotated[float, Field(allow_inf_nan=False, gt=0.0)]
    soh: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=2.0)]
    eol_threshold: Annotated[float, Field(allow_inf_nan=False, gt=0.0, lt=1.0)]
    eol_cycle: FiniteFloat | None = Field(None, description="forecast cycle count at which SoH crosses EOL")
    rul_cycles: RulCycles | None = None
    #: RUL percentiles of the 80 % interval: where the trajectory's lower bound (p10), centre (p50) and upper
    #: bound (p90) cross the EOL threshold; None = not within the forecast horizon (then every later one too)
    rul_cycles_p10: RulCycles | None = None
    rul_cycles_p50: RulCycles | None = None
    rul_cycles_p90: RulCycles | None = None
    forecast: tuple[ForecastPoint, ...] = ()
    method: HealthMethod
    model_version: str = Field(max_length=64)
    fit_params: dict[str, FiniteFloat] = Field(default_factory=dict)
    source_id: Ident
    simulated: bool = False

    @model_validator(mode="after")
    def _percentiles(self) -> Health:
        ps = (self.rul_cycles_p10, self.rul_cycles_p50, self.rul_cycles_p90)
        for a, b, names in ((ps[0], ps[1], "p10/p50"), (ps[1], ps[2], "p50/p90")):
            if a is None and b is not None:
                raise ValueError(f"RUL {names}: a later percentile is set while an earlier one is not")
            if a is not None and b is not None and a > b:
                raise ValueError(f"RUL percentiles out of order ({names}: {a} > {b})")
        return self


Severity = Literal["info", "warning", "critical"]

#: the alarm codes of the device's anomaly detectors (device_agent.health.anomalies): one list for the device,
#: the cloud's notifications and the dashboard's timeline markers
AnomalyCode = Literal["capacity_drop", "resistance_jump", "abnormal_heating", "cell_drift"]
ANOMALY_CODES: frozenset[str] = frozenset(get_args(AnomalyCode))


class Alarm(Message):
    """A condition an operator should know about. ``active = False`` clears an earlier alarm."""

    ts: Timestamp
    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
    severity: Severity
    active: bool = True
    message: Annotated[str, Field(max_length=1024)]
    details: dict[str, FiniteFloat | int | str | bool | None] = Field(default_factory=dict)
    source_id: Ident
    simulated: bool = False


class Telemetry(Message):
    """A batch of samples (telemetry is batched by time or count to save messages)."""

    samples: tuple[Sample, ...] = Field(min_length=1, max_length=10_000)


MessageKind = Literal["telemetry", "cycles", "health", "alarms"]

BODY_TYPES: dict[str, type[Message]] = {
    "telemetry": Telemetry,
    "cycles": CycleRecord,
    "health": Health,
    "alarms": Alarm,
}


class Envelope(Message):
    """What travels on MQTT: one message of one kind, with an id for de-duplication."""

    v: Literal[1] = SCHEMA_VERSION
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    thing: Ident
    kind: MessageKind
    ts: Timestamp
    simulated: bool
    body: dict[str, Any]

    def parsed_body(self) -> Message:
        """Validate ``body`` against the model of ``kind`` (raises pydantic.ValidationError; a packed telemetry
        body that does not unpack raises :class:`PackedBodyError`, a ValueError)."""
        body = unpacked_body(self.body) if self.kind == "telemetry" else self.body
        return BODY_TYPES[self.kind].model_validate(body)


_ID_PREFIX = secrets.token_hex(8)  # random per process: ids never repeat across restarts
_ID_COUNTER = itertools.count(1)


def new_message_id() -> str:
    """A unique message id: a random per-process prefix and a counter (cheap; no syscall per message)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


Body = Telemetry | CycleRecord | Health | Alarm
_SAMPLE_JSON: TypeAdapter[Sample] = TypeAdapter(Sample)


def encode_samples(samples: Iterable[Sample]) -> bytes:
    """Samples as the JSON array a telemetry envelope carries. A reading the source does not have (no SoC, no
    cell voltages) is left out rather than sent as null: a fifth fewer bytes per sample (IoT Core bills by
    5 KB); every reader parses with the defaults."""
    return b"[" + b",".join(encode_sample(s) for s in samples) + b"]"


def encode_sample(sample: Sample) -> bytes:
    """One sample as :func:`encode_samples` writes it (the agent's batcher encodes each sample once)."""
    return _SAMPLE_JSON.dump_json(sample, exclude_none=True)


#: a packed telemetry body: ``{"zsamples": <base64 of the zlib-compressed samples array>, "n": <samples>}``
PACKED_FIELD = "zsamples"
#: what one packed body may unpack to (a 10,000-sample batch of a 256-cell pack is ~20 MB; IoT Core carries
#: at most 128 KB compressed): a decompression bomb stops here instead of filling the reader's memory
PACKED_MAX_BYTES = 32 * 1024 * 1024


class PackedBodyError(ValueError):
    """A packed telemetry body that does not unpack to a JSON array of samples (says what was wrong)."""


def pack_samples(samples_json: bytes, n: int) -> bytes:
    """The packed telemetry body around the ``n`` samples :func:`encode_samples` wrote: the same bytes,
    zlib-compressed (level 9) and base64'd. Lossless: :func:`unpacked_body` gives back exactly these samples.
    A 60-sample batch of a 4S pack is ~1.3 KB packed instead of ~11 KB (IoT Core and Firehose bill by 5 KB)."""
    data = base64.b64encode(zlib.compress(samples_json, 9))
    return b'{"' + PACKED_FIELD.encode() + b'":"' + data + b'","n":' + str(n).encode() + b"}"


def is_packed(body: dict[str, Any]) -> bool:
    """Whether a telemetry body is the packed form (else ``{"samples": [...]}``)."""
    return PACKED_FIELD in body


def unpacked_body(body: dict[str, Any]) -> dict[str, Any]:
    """A telemetry body as ``{"samples": [...]}`` whether it travelled packed or not (raises
    :class:`PackedBodyError` naming what was wrong when a packed body does not unpack)."""
    if PACKED_FIELD not in body:
        return body
    extra = sorted(set(body) - {PACKED_FIELD, "n"})
    if extra:
        raise PackedBodyError(f"packed telemetry body has unexpected fields: {', '.join(extra)}")
    data = body[PACKED_FIELD]
    if not isinstance(data, str):
        raise PackedBodyError(f"{PACKED_FIELD} must be a base64 string, got {type(data).__name__}")
    try:
        compressed = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PackedBodyError(f"{PACKED_FIELD} is not valid base64: {exc}") from None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, PACKED_MAX_BYTES)
    except zlib.error as exc:
        raise PackedBodyError(f"{PACKED_FIELD} is not zlib data: {exc}") from None
    if inflater.unconsumed_tail:
        raise PackedBodyError(f"{PACKED_FIELD} unpacks to more than {PACKED_MAX_BYTES} bytes")
    if not inflater.eof:
        raise PackedBodyError(f"{PACKED_FIELD} is truncated zlib data")
    try:
        samples = json.loads(raw)
    except ValueError as exc:
        raise PackedBodyError(f"{PACKED_FIELD} does not unpack to JSON: {exc}") from None
    if not isinstance(samples, list):
        raise PackedBodyError(f"{PACKED_FIELD} unpacks to {type(samples).__name__}, not an array of samples")
    n = body.get("n")
    if n is not None and n != len(samples):
        raise PackedBodyError(f"packed telemetry body says n={n!r} but holds {len(samples)} samples")
    return {"samples": samples}


def telemetry_samples(body: dict[str, Any]) -> list[Any]:
    """The samples (as JSON objects) of a telemetry body, packed or not (raises :class:`PackedBodyError`, or
    KeyError when there are none)."""
    samples: list[Any] = unpacked_body(body)["samples"]
    return samples


def is_simulated(body: Body) -> bool:
    """The envelope's ``simulated`` flag: a telemetry batch is simulated when any of its samples is."""
    if isinstance(body, Telemetry):
        return any(s.simulated for s in body.samples)
    return body.simulated


def encode_envelope(
    thing: str,
    kind: MessageKind,
    body: Body,
    ts: float,
    msg_id: str | None = None,
    *,
    samples_json: bytes | None = None,
    packed: bool = False,
) -> bytes:
    """The bytes a device publishes: the compact JSON envelope around ``body``. The one encoder of the wire
    format (the agent and every test that builds device messages use it).

    ``samples_json`` is the fast path for telemetry: the batch's samples already encoded by
    :func:`encode_samples` (the agent encodes each sample once, as it batches them). With ``packed`` a telemetry
    body is sent packed (:func:`pack_samples`) when that is smaller than the plain one (a batch of one or two
    samples is not). Non-finite numbers are refused (ValueError), never sent.
    """
    if isinstance(body, Telemetry):
        if samples_json is None:
            samples_json = encode_samples(body.samples)
        body_json = b'{"samples":' + samples_json + b"}"
        if packed:
            packed_json = pack_samples(samples_json, len(body.samples))
            if len(packed_json) < len(body_json):
                body_json = packed_json
    else:
        body_json = body.model_dump_json().encode()
    head = {
        "v": SCHEMA_VERSION,
        "id": msg_id or new_message_id(),
        "thing": thing,
        "kind": kind,
        "ts": ts,
        "simulated": is_simulated(body),
    }
    # the envelope's fields, then the body serialised by pydantic-core (no intermediate dicts)
    return json.dumps(head, separators=(",", ":"), allow_nan=False).encode()[:-1] + b',"body":' + body_json + b"}"


def envelope(thing: str, kind: MessageKind, body: Body, ts: float, msg_id: str | None = None) -> Envelope:
    """The envelope a device sends, parsed back (what the cloud sees): :func:`encode_envelope` read back."""
    return Envelope.model_validate_json(encode_envelope(thing, kind, body, ts, msg_id))
