"""The bank view of a multi-pack agent: the packs as wired together (``bank.arrangement``).

Pure arithmetic on each pack's latest figures (its last sample and its last measured capacity):

* **parallel** — capacities add up, the bank's voltage is the packs' mean, currents add up;
* **series** — the string holds what its smallest pack holds (capacity is the minimum), voltages add up,
  the current is the packs' mean (it is one current).

The remaining charge follows the same rule (sum in parallel, minimum in series: the first pack to empty
stops the string). The *weakest pack* is the one with the smallest measured capacity (or, before any pack
has one, the lowest state of charge). *Imbalance* is the spread between packs: state of charge (percentage
points), capacity (percent of the largest) and voltage. A figure no pack reports yet is None, never guessed.

The view is computed on the device, logged as a JSON line and written to a local status file (see
device_agent.packs); it is not published (its figures are derived from what each pack's twin publishes).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Arrangement = Literal["parallel", "series"]


@dataclass(frozen=True, slots=True)
class PackFigures:
    """One pack's latest figures (None: not known yet)."""

    pack_id: str
    online: bool
    capacity_ah: float | None = None
    soh: float | None = None
    soc_pct: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None


@dataclass(frozen=True, slots=True)
class BankView:
    arrangement: Arrangement
    packs: int
    packs_online: int
    #: parallel: sum of the capacities; series: the smallest (None until every pack has measured one)
    capacity_ah: float | None
    #: charge left: parallel Σ capacity × SoC; series min(capacity × SoC) (None until every pack has both)
    remaining_ah: float | None
    voltage_v: float | None
    current_a: float | None
    weakest_pack: str | None
    weakest_capacity_ah: float | None
    soc_spread_pct: float | None
    capacity_spread_pct: float | None
    voltage_spread_v: float | None
    simulated: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _spread(values: list[float]) -> float | None:
    return max(values) - min(values) if len(values) >= 2 else (0.0 if values else None)


def bank_view(arrangement: Arrangement, packs: list[PackFigures], simulated: bool = False) -> BankView:
    n = len(packs)
    caps = [p.capacity_ah for p in packs if p.capacity_ah is not None]
    socs = [p.soc_pct for p in packs if p.soc_pct is not None]
    volts = [p.voltage_v for p in packs if p.voltage_v is not None]
    amps = [p.current_a for p in packs if p.current_a is not None]
    all_caps = len(caps) == n and n > 0
    remaining = [
        p.capacity_ah * p.soc_pct / 100.0 for p in packs if p.capacity_ah is not None and p.soc_pct is not None
    ]
    if arrangement == "parallel":
        capacity = sum(caps) if all_caps else None
        left = sum(remaining) if len(remaining) == n and n else None
        voltage = sum(volts) / len(volts) if volts else None
        current = sum(amps) if len(amps) == n and n else None
    else:
        capacity = min(caps) if all_caps else None
        left = min(remaining) if len(remaining) == n and n else None
        voltage = sum(volts) if len(volts) == n and n else None
        current = sum(amps) / len(amps) if amps else None
    weakest: PackFigures | None = None
    if caps:
        weakest = min((p for p in packs if p.capacity_ah is not None), key=lambda p: p.capacity_ah or 0.0)
    elif socs:
        weakest = min((p for p in packs if p.soc_pct is not None), key=lambda p: p.soc_pct or 0.0)
    cap_spread = _spread(caps)
    return BankView(
        arrangement=arrangement,
        packs=n,
        packs_online=sum(1 for p in packs if p.online),
        capacity_ah=capacity,
        remaining_ah=left,
        voltage_v=voltage,
        current_a=current,
        weakest_pack=weakest.pack_id if weakest else None,
        weakest_capacity_ah=weakest.capacity_ah if weakest else None,
        soc_spread_pct=_spread(socs),
        capacity_spread_pct=(100.0 * cap_spread / max(caps)) if cap_spread is not None and max(caps) > 0 else None,
        voltage_spread_v=_spread(volts),
        simulated=simulated,
    )


def write_status(path: Path, view: BankView, ts: float, pack_figures: list[PackFigures]) -> None:
    """The view and each pack's figures as JSON, replaced atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"ts": ts, **view.to_dict(), "pack_figures": [asdict(p) for p in pack_figures]}
    fd, tmp = tempfile.mkstemp(prefix=".bank-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"), allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
