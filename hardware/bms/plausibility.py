"""Physical plausibility limits applied to every reading before it becomes a Sample.

A frame can pass its checksum and still be nonsense (a firmware bug, a misconfigured register map, a
different pack on the bus). Such readings are rejected with ImplausibleValueError, never passed on.
Pack voltage limits come from the cell count: the count the device reports, else the one configured
(``cells=`` in the source URL). When both are known and differ, that is implausible too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hardware.errors import ImplausibleValueError


@dataclass(frozen=True, slots=True)
class PlausibilityLimits:
    cell_voltage_min_v: float = 1.0
    cell_voltage_max_v: float = 5.0
    max_abs_current_a: float = 1000.0
    temperature_min_c: float = -40.0
    temperature_max_c: float = 120.0
    #: configured series cell count (None = trust the device's count, if it reports one)
    cells: int | None = None
    #: pack voltage ceiling when no cell count is known at all
    max_pack_voltage_v: float = 1000.0


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ImplausibleValueError(f"{name} is not a finite number ({value!r})")


def check_plausible(
    limits: PlausibilityLimits,
    *,
    voltage_v: float,
    current_a: float,
    temperatures_c: Sequence[float] = (),
    soc_pct: float | None = None,
    cell_voltages_v: Sequence[float] | None = None,
    reported_cells: int | None = None,
) -> None:
    """Raise ImplausibleValueError naming the first value outside physical limits."""
    _finite("pack voltage", voltage_v)
    _finite("current", current_a)
    if reported_cells is not None and reported_cells < 1:
        raise ImplausibleValueError(f"device reports {reported_cells} cells")
    if reported_cells is not None and limits.cells is not None and reported_cells != limits.cells:
        raise ImplausibleValueError(
            f"device reports {reported_cells} cells but the source is configured for {limits.cells}"
        )
    cells = reported_cells if reported_cells is not None else limits.cells
    if cells is None and cell_voltages_v:
        cells = len(cell_voltages_v)
    if cells is not None:
        if cells < 1:
            raise ImplausibleValueError(f"cell count {cells} is not positive")
        low, high = cells * limits.cell_voltage_min_v, cells * limits.cell_voltage_max_v
        if not low <= voltage_v <= high:
            raise ImplausibleValueError(
                f"pack voltage {voltage_v:.3f} V outside {low:.1f}..{high:.1f} V for {cells} cells"
            )
    elif not 0.0 < voltage_v <= limits.max_pack_voltage_v:
        raise ImplausibleValueError(f"pack voltage {voltage_v:.3f} V outside 0..{limits.max_pack_voltage_v} V")
    if abs(current_a) > limits.max_abs_current_a:
        raise ImplausibleValueError(f"current {current_a:.3f} A exceeds ±{limits.max_abs_current_a:g} A")
    for i, temp in enumerate(temperatures_c):
        _finite(f"temperature {i + 1}", temp)
        if not limits.temperature_min_c <= temp <= limits.temperature_max_c:
            raise ImplausibleValueError(
                f"temperature {i + 1} = {temp:.1f} °C outside "
                f"{limits.temperature_min_c:g}..{limits.temperature_max_c:g} °C"
            )
    if soc_pct is not None:
        _finite("SoC", soc_pct)
        if not 0.0 <= soc_pct <= 100.0:
            raise ImplausibleValueError(f"SoC {soc_pct:g} % outside 0..100 %")
    if cell_voltages_v is not None:
        if cells is not None and len(cell_voltages_v) != cells:
            raise ImplausibleValueError(f"{len(cell_voltages_v)} cell voltages for a {cells}-cell pack")
        for i, cell_v in enumerate(cell_voltages_v):
            _finite(f"cell {i + 1} voltage", cell_v)
            if not limits.cell_voltage_min_v <= cell_v <= limits.cell_voltage_max_v:
                raise ImplausibleValueError(
                    f"cell {i + 1} voltage {cell_v:.3f} V outside "
                    f"{limits.cell_voltage_min_v:g}..{limits.cell_voltage_max_v:g} V"
                )
