"""aiobmsble's BMSSample (a dict) → the fields of a battwin Sample. The decoding itself is aiobmsble's.

aiobmsble's conventions match battwin's: volts, amperes with **positive = charging** (its ``power`` and
``battery_charging`` follow the same sign), °C, ``battery_level`` in %. Which of its values go where:

==================  ==========================================================================================
Sample              BMSSample
==================  ==========================================================================================
``voltage_v``       ``voltage`` (required: without it the poll fails with DecodeError)
``current_a``       ``current`` (required)
``temperatures_c``  ``temp_values`` whose sensor type is a battery one (generic, cell, cell max/min); MOSFET,
                    PCB, heater, balancer and ambient sensors are left out: they are not the cells' temperature
                    and would trip the heating alarms
``soc_pct``         ``battery_level`` (the BMS's own state of charge)
``cell_voltages_v`` ``cell_voltages`` (None when the BMS reports none)
==================  ==========================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hardware.errors import DecodeError

#: aiobmsble TempSensor.T names that measure the battery
BATTERY_SENSOR_TYPES = frozenset({"GENERIC", "CELL", "CELL_MAX", "CELL_MIN"})


@dataclass(frozen=True, slots=True)
class BleReading:
    voltage_v: float
    current_a: float
    temperatures_c: tuple[float, ...]
    soc_pct: float | None
    cell_voltages_v: tuple[float, ...] | None
    reported_cells: int | None


def _number(sample: Mapping[str, Any], key: str) -> float | None:
    value = sample.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"aiobmsble returned {key}={value!r}, not a number")
    return float(value)


def _temperature(entry: Any) -> float | None:
    """A TempSensor (``.value``, ``.type``) or a plain number; None for a non-battery sensor."""
    kind = getattr(entry, "type", None)
    if kind is not None and getattr(kind, "name", str(kind)) not in BATTERY_SENSOR_TYPES:
        return None
    value = getattr(entry, "value", entry)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"aiobmsble returned a temperature {entry!r}, not a number")
    return float(value)


def reading_from_sample(sample: Mapping[str, Any]) -> BleReading:
    """Map one aiobmsble sample; a missing pack voltage or current is a DecodeError."""
    voltage = _number(sample, "voltage")
    current = _number(sample, "current")
    if voltage is None or current is None:
        missing = [k for k, v in (("voltage", voltage), ("current", current)) if v is None]
        raise DecodeError(f"aiobmsble returned no {' and no '.join(missing)} (keys: {sorted(sample)})")
    temps_raw = sample.get("temp_values") or ()
    if not isinstance(temps_raw, Sequence):
        raise DecodeError(f"aiobmsble returned temp_values={temps_raw!r}")
    temperatures = tuple(t for t in (_temperature(e) for e in temps_raw) if t is not None)
    cells_raw = sample.get("cell_voltages") or ()
    if not isinstance(cells_raw, Sequence):
        raise DecodeError(f"aiobmsble returned cell_voltages={cells_raw!r}")
    cells = tuple(float(v) for v in cells_raw)
    count = sample.get("cell_count")
    reported = int(count) if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None
    soc = _number(sample, "battery_level")
    for name, value in (("voltage", voltage), ("current", current), ("battery_level", soc)):
        if value is not None and not math.isfinite(value):
            raise DecodeError(f"aiobmsble returned {name}={value!r}")
    return BleReading(
        voltage_v=voltage,
        current_a=current,
        temperatures_c=temperatures,
        soc_pct=soc,
        cell_voltages_v=cells or None,
        reported_cells=reported if reported is not None else (len(cells) or None),
    )
