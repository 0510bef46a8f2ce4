"""What Home Assistant shows for a pack, as data: one row per entity, in the style of Home Assistant
integrations' entity descriptions (``SensorEntityDescription``): a key, a name, the component (``sensor`` /
``binary_sensor``), the device class, unit and state class, and the extractor that reads the value from the
agent's message (a :class:`Sample`, a :class:`Health` or the set of active alarms).

A pack's states travel as one JSON object per stream (``sample``, ``health``, ``alarms``) whose keys are the
rows' keys; each entity's ``value_template`` picks its key. A value the pack does not have (no BMS SoC, battwin's
own SoC not computed, no RUL within the forecast horizon) is ``null`` and the entity is *unavailable* rather than
a stale or invented number (see ``discovery``: each such row carries an availability template on its own key).

The per-cell voltages and per-sensor temperatures are rows made from the first sample (their count is the
pack's): :func:`sample_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from device_agent.alarms import ALARMS, AlarmCode
from schema.messages import Health, Sample

Component = Literal["sensor", "binary_sensor"]
Stream = Literal["sample", "health", "alarms"]
StateClass = Literal["measurement", "total", "total_increasing"]
Value = float | int | str | None
T = TypeVar("T")


@dataclass(frozen=True)
class EntityDescription(Generic[T]):
    """One Home Assistant entity of a pack. ``key`` is the entity's object id suffix and its key in the stream's
    JSON state; ``value_fn`` reads it from the stream's input (None = the pack has no such value now)."""

    key: str
    name: str
    stream: Stream
    value_fn: Callable[[T], Value]
    component: Component = "sensor"
    device_class: str | None = None
    unit: str | None = None
    state_class: StateClass | None = None
    entity_category: Literal["diagnostic"] | None = None
    icon: str | None = None
    #: ``suggested_display_precision`` (decimals shown by default)
    precision: int | None = None
    #: also unavailable while the pack's source is offline (the measurements; not the alarms, which say so)
    follows_pack: bool = True


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _soc_est(sample: Sample) -> float | None:
    # battwin's own SoC: a Sample field added with the SoC estimator (docs: issue #17 item 3); None until it
    # has an estimate, and absent on a Sample model that predates it
    value = getattr(sample, "soc_est_pct", None)
    return None if value is None else round(float(value), 1)


def _spread(sample: Sample) -> float | None:
    cells = sample.cell_voltages_v
    return round(max(cells) - min(cells), 4) if cells and len(cells) >= 2 else None


#: the pack-level rows of the ``sample`` stream (cells and temperatures: :func:`sample_rows`)
PACK_SAMPLE_ROWS: tuple[EntityDescription[Sample], ...] = (
    EntityDescription("voltage", "Voltage", "sample", lambda s: round(s.voltage_v, 3),
                      device_class="voltage", unit="V", state_class="measurement", precision=2),
    EntityDescription("current", "Current", "sample", lambda s: round(s.current_a, 3),
                      device_class="current", unit="A", state_class="measurement", precision=2),
    EntityDescription("power", "Power", "sample", lambda s: round(s.voltage_v * s.current_a, 2),
                      device_class="power", unit="W", state_class="measurement", precision=0),
    EntityDescription("soc_bms", "State of charge (BMS)", "sample", lambda s: _round(s.soc_pct, 1),
                      device_class="battery", unit="%", state_class="measurement", precision=0),
    EntityDescription("soc_battwin", "State of charge (battwin)", "sample", _soc_est,
                      device_class="battery", unit="%", state_class="measurement", precision=0),
    EntityDescription("cell_spread", "Cell voltage spread", "sample", _spread,
                      device_class="voltage", unit="V", state_class="measurement", precision=3,
                      entity_category="diagnostic"),
)  # fmt: skip


def _cell(i: int) -> Callable[[Sample], Value]:
    def value(sample: Sample) -> Value:
        cells = sample.cell_voltages_v
        return round(cells[i], 4) if cells is not None and i < len(cells) else None

    return value


def _temperature(i: int) -> Callable[[Sample], Value]:
    def value(sample: Sample) -> Value:
        temps = sample.temperatures_c
        return round(temps[i], 1) if i < len(temps) else None

    return value


def cell_rows(n: int) -> tuple[EntityDescription[Sample], ...]:
    return tuple(
        EntityDescription(f"cell_{i + 1}_voltage", f"Cell {i + 1} voltage", "sample", _cell(i),
                          device_class="voltage", unit="V", state_class="measurement", precision=3)
        for i in range(n)
    )  # fmt: skip


def temperature_rows(n: int) -> tuple[EntityDescription[Sample], ...]:
    return tuple(
        EntityDescription(f"temperature_{i + 1}", "Temperature" if n == 1 else f"Temperature {i + 1}", "sample",
                          _temperature(i), device_class="temperature", unit="°C", state_class="measurement",
                          precision=1)
        for i in range(n)
    )  # fmt: skip


def sample_rows(first: Sample) -> tuple[EntityDescription[Sample], ...]:
    """The ``sample`` rows of a pack, sized by its first sample (cells and temperature sensors)."""
    cells = len(first.cell_voltages_v) if first.cell_voltages_v else 0
    return PACK_SAMPLE_ROWS + temperature_rows(len(first.temperatures_c)) + cell_rows(cells)


def _rul(health: Health) -> Value:
    rul = health.rul_cycles_p50 if health.rul_cycles_p50 is not None else health.rul_cycles
    return None if rul is None else round(rul, 0)


HEALTH_ROWS: tuple[EntityDescription[Health], ...] = (
    EntityDescription("soh", "State of health", "health", lambda h: round(h.soh * 100.0, 2),
                      unit="%", state_class="measurement", icon="mdi:battery-heart-variant", precision=1),
    EntityDescription("rul", "Remaining useful life", "health", _rul,
                      unit="cycles", state_class="measurement", icon="mdi:battery-clock", precision=0),
    EntityDescription("capacity", "Capacity", "health", lambda h: round(h.capacity_ah, 4),
                      unit="Ah", state_class="measurement", icon="mdi:battery-high", precision=2),
    EntityDescription("initial_capacity", "Initial capacity", "health", lambda h: round(h.initial_capacity_ah, 4),
                      unit="Ah", icon="mdi:battery", precision=2, entity_category="diagnostic"),
    EntityDescription("equivalent_cycles", "Equivalent cycles", "health", lambda h: round(h.equivalent_cycles, 2),
                      unit="cycles", state_class="total_increasing", icon="mdi:counter", precision=0),
)  # fmt: skip

#: alarms that are events, not states (``AlarmBook.pulse``: emitted each time, never active): a binary sensor
#: for them would always be off, so they get none
PULSED_ALARMS: frozenset[AlarmCode] = frozenset(
    {"spool_dropped", "message_too_large", "model_rejected", "config_rejected"}
)
#: the device class of an alarm's binary sensor (``problem`` unless a closer one exists)
_ALARM_DEVICE_CLASS: dict[str, str] = {"over_temperature": "heat", "abnormal_heating": "heat"}
#: the agent's own trouble, not the battery's: shown under the device's diagnostics
_DIAGNOSTIC_ALARMS = frozenset({"source_fallback_simulator", "model_unavailable"})
#: entity names where the code read as words is not the name (else ``cell_drift`` → "Cell drift")
_ALARM_NAMES: dict[str, str] = {
    "eol_reached": "End of life reached",
    "source_fallback_simulator": "Simulated fallback data",
    "model_unavailable": "Health model unavailable",
    "soc_disagreement": "SoC disagreement (BMS vs battwin)",  # with battwin's own SoC (issue #17 item 3)
}

ActiveAlarms = frozenset[str]


def _alarm_state(code: str) -> Callable[[ActiveAlarms], Value]:
    return lambda active: "ON" if code in active else "OFF"


#: one binary sensor per alarm that holds a state: every row of ``device_agent.alarms.ALARMS`` but the pulsed
#: ones (a new stateful alarm row gets its binary sensor without an edit here)
ALARM_ROWS: tuple[EntityDescription[ActiveAlarms], ...] = tuple(
    EntityDescription(
        code,
        _ALARM_NAMES.get(code, code.replace("_", " ").capitalize()),
        "alarms",
        _alarm_state(code),
        component="binary_sensor",
        device_class=_ALARM_DEVICE_CLASS.get(code, "problem"),
        entity_category="diagnostic" if code in _DIAGNOSTIC_ALARMS else None,
        follows_pack=False,
    )
    for code in ALARMS
    if code not in PULSED_ALARMS
)


def state_of(rows: tuple[EntityDescription[T], ...], value: T) -> dict[str, Value]:
    """The stream's JSON state: every row's key with its value (``None`` kept, as ``null``)."""
    return {row.key: row.value_fn(value) for row in rows}
