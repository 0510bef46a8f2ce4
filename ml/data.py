"""Readers for cell data, and which cells can be test cells (:func:`scorability`).

Two sources, one result (:class:`Cell`):

* the per-cycle cell CSV contract (``/work/shared/data/README.md``): ``cycle`` (integer, increasing, gaps
  allowed) and ``capacity_ah`` (may be empty, zero or an outlier) are required; ``ambient_temperature_c``,
  ``elapsed_h`` and ``nominal_capacity_ah`` are optional; other columns are ignored;
* raw BMS logs (``t_s, voltage_v, current_a, temperature_c``; NASA sign: positive = charging), turned into
  cycles by the device's own :class:`CycleTracker` and :class:`HealthEstimator` so that training sees the
  capacities, cycle numbers, elapsed times and temperatures the device would.

Offline cleaning (for training targets) is :func:`ml.offline_cleaning.clean_cell`; splits by whole cells
are in :mod:`ml.splitting`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device_agent.config import HealthSettings, TrackerSettings
from device_agent.health.estimator import HealthEstimator
from device_agent.health.fade_law import CapacityPoint
from device_agent.tracking.cycle_tracker import CycleTracker
from schema.messages import CycleRecord

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("cycle", "capacity_ah")
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none"})


class CellFileError(ValueError):
    """A cell file or folder breaks the contract (missing, empty, bad column or value)."""


@dataclass(frozen=True)
class Cell:
    """One cell's per-cycle history, as read (nothing dropped): NaN where a value is missing."""

    dataset: str
    cell: str
    path: Path
    sha256: str
    cycles: np.ndarray
    capacity_ah: np.ndarray
    temperature_c: np.ndarray | None = None
    elapsed_h: np.ndarray | None = None
    nominal_ah: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cycles)

    @property
    def valid(self) -> np.ndarray:
        """Rows with a finite capacity > 0 (the evaluation's 'valid rows')."""
        c = self.capacity_ah
        return np.isfinite(c) & (c > 0)

    def valid_indices(self) -> np.ndarray:
        return np.nonzero(self.valid)[0]

    def points(self) -> list[CapacityPoint]:
        """The valid rows as CapacityPoints, in file order."""
        out: list[CapacityPoint] = []
        temp, el = self.temperature_c, self.elapsed_h
        for i in self.valid_indices():
            t = float(temp[i]) if temp is not None and math.isfinite(temp[i]) else None
            e = float(el[i]) if el is not None and math.isfinite(el[i]) else None
            out.append(CapacityPoint(float(self.cycles[i]), float(self.capacity_ah[i]), e, t))
        return out

    def c0(self, first: int = 5) -> float | None:
        """Median capacity of the first ``first`` valid rows (the evaluation's and device's C0 rule)."""
        v = self.capacity_ah[self.valid][:first]
        return float(np.median(v)) if len(v) else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _float(text: str, path: Path, line: int, column: str) -> float:
    s = text.strip()
    if s.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(s)
    except ValueError:
        raise CellFileError(f"{path}:{line}: column {column!r} holds {text!r}, not a number") from None


def read_cell_csv(path: Path, dataset: str | None = None) -> Cell:
    """Read one per-cycle cell CSV (the shared contract). Raises CellFileError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CellFileError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CellFileError(f"{path}: empty file (no header)") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise CellFileError(f"{path}: missing required column(s) {missing}; header is {header[:8]}")
        col = {name: header.index(name) for name in header}
        opt = {k: col.get(k) for k in ("ambient_temperature_c", "elapsed_h", "nominal_capacity_ah")}
        cycles: list[float] = []
        caps: list[float] = []
        temps: list[float] = []
        elaps: list[float] = []
        noms: list[float] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not x.strip() for x in row):
                continue
            if len(row) < len(header):
                row.extend([""] * (len(header) - len(row)))
            cy = _float(row[col["cycle"]], path, line, "cycle")
            if not math.isfinite(cy) or cy != round(cy):
                raise CellFileError(f"{path}:{line}: cycle {row[col['cycle']]!r} is not an integer")
            if cycles and cy <= cycles[-1]:
                raise CellFileError(f"{path}:{line}: cycle {int(cy)} does not increase (previous {int(cycles[-1])})")
            cycles.append(cy)
            caps.append(_float(row[col["capacity_ah"]], path, line, "capacity_ah"))
            if (i := opt["ambient_temperature_c"]) is not None:
                temps.append(_float(row[i], path, line, "ambient_temperature_c"))
            if (i := opt["elapsed_h"]) is not None:
                elaps.append(_float(row[i], path, line, "elapsed_h"))
            if (i := opt["nominal_capacity_ah"]) is not None:
                noms.append(_float(row[i], path, line, "nominal_capacity_ah"))
    if not cycles:
        raise CellFileError(f"{path}: no data rows")
    nom = [x for x in noms if math.isfinite(x) and x > 0]
    return Cell(
        dataset=dataset or path.parent.name,
        cell=path.name.removesuffix(".gz").removesuffix(".csv"),
        path=path,
        sha256=_sha256(path),
        cycles=np.asarray(cycles, dtype=float),
        capacity_ah=np.asarray(caps, dtype=float),
        temperature_c=np.asarray(temps, dtype=float) if temps else None,
        elapsed_h=np.asarray(elaps, dtype=float) if elaps else None,
        nominal_ah=float(np.median(nom)) if nom else None,
    )


def cell_files(directory: Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise CellFileError(f"{d}: no such directory")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise CellFileError(f"{d}: no *.csv cell files")
    return files


def read_cells_dir(directory: Path, *, limit: int | None = None) -> list[Cell]:
    """All cell CSVs of a folder, sorted by name; dataset = the folder name."""
    d = Path(directory)
    files = cell_files(d)
    if limit is not None:
        files = files[:limit]
    return [read_cell_csv(p, d.resolve().name) for p in files]


# -- raw BMS logs -----------------------------------------------------------------------------------


def _open_text(path: Path) -> Iterable[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_bms_log(
    path: Path,
    dataset: str | None = None,
    tracker: TrackerSettings | None = None,
) -> Cell:
    """Replay a raw BMS log through the device's CycleTracker + HealthEstimator; one row per discharge.

    Every discharge the tracker finds is a row (its cycle index); discharges that did not reach the
    cut-off carry no capacity (NaN), exactly as the device would not record them. Rows of the log with a
    missing time, voltage or current are skipped (a BMS does not report them).
    """
    path = Path(path)
    if not path.is_file():
        raise CellFileError(f"{path}: no such file")
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    tr = CycleTracker(tracker or TrackerSettings(), name.replace(" ", "_"))
    est = HealthEstimator(HealthSettings(), name.replace(" ", "_"))
    records: list[CycleRecord] = []
    skipped = 0
    with _open_text(path) as fh:  # type: ignore[attr-defined]
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        need = ("t_s", "voltage_v", "current_a")
        if any(c not in header for c in need):
            raise CellFileError(f"{path}: a BMS log needs columns {need}; header is {header}")
        it, iv, ii = (header.index(c) for c in need)
        itemp = header.index("temperature_c") if "temperature_c" in header else None
        for row in reader:
            try:
                ts, v, i = float(row[it]), float(row[iv]), float(row[ii])
            except (ValueError, IndexError):
                skipped += 1
                continue
            temp: float | None = None
            if itemp is not None and row[itemp].strip():
                try:
                    temp = float(row[itemp])
                except ValueError:
                    temp = None
            records.extend(tr.push_values(ts, v, i, temp))
        records.extend(tr.flush())
    cycles: list[float] = []
    caps: list[float] = []
    temps: list[float] = []
    elaps: list[float] = []
    for rec in records:
        if rec.kind != "discharge":
            est.observe(rec)
            continue
        p = est.observe(rec)
        cycles.append(float(rec.index))
        caps.append(p.capacity_ah if p is not None else math.nan)
        temps.append(p.temperature_c if p is not None and p.temperature_c is not None else math.nan)
        elaps.append(p.elapsed_h if p is not None and p.elapsed_h is not None else math.nan)
    if not cycles:
        raise CellFileError(f"{path}: the cycle tracker found no discharge")
    log.debug("bms log %s replayed: %d discharges, %d rows skipped", path, len(cycles), skipped)
    return Cell(
        dataset=dataset or path.parent.name,
        cell=name,
        path=path,
        sha256=_sha256(path),
        cycles=np.asarray(cycles),
        capacity_ah=np.asarray(caps),
        temperature_c=np.asarray(temps),
        elapsed_h=np.asarray(elaps),
        extra={"skipped_rows": str(skipped)},
    )


def read_bms_dir(directory: Path, *, limit: int | None = None) -> list[Cell]:
    d = Path(directory)
    if not d.is_dir():
        raise CellFileError(f"{d}: no such directory")
    files = sorted(p for p in d.iterdir() if p.is_file() and (p.name.endswith(".csv.gz") or p.suffix == ".csv"))
    if not files:
        raise CellFileError(f"{d}: no BMS log files (*.csv, *.csv.gz)")
    return [read_bms_log(p, d.resolve().name) for p in files[:limit]]


# -- which cells can be scored ----------------------------------------------------------------------


#: a test cell needs this many valid rows: the three prediction points then each have a history and a future
SCORABLE_MIN_ROWS = 20
#: ... and its contract SoH (capacity / median of the first 5 valid rows) must stay in this band on all
#: but SCORABLE_MAX_OUTSIDE of its valid rows
SCORABLE_SOH_BAND = (0.5, 1.2)
SCORABLE_MAX_OUTSIDE = 0.05


@dataclass(frozen=True)
class Scorability:
    ok: bool
    n_valid: int
    frac_outside: float
    reason: str


def scorability(cell: Cell) -> Scorability:
    """Whether the contract's SoH means a state of health for this cell, so that it can be a test cell.

    The contract divides by C0 = the median of the first 5 valid rows. Where those rows come from a block
    of runs under other conditions (NASA B0038-B0041: C0 0.06-1.06 Ah, later 1.7 Ah, "SoH" up to 22), or
    a large part of the file is failed or cold high-current runs (B0042-B0044: 41 % of rows at SoH 0.04;
    B0050: 45 %), or there are too few rows (B0052: 4), no forecast can be scored against that "SoH".
    Such cells still train the model (its cleaning must cope with them); they are never test cells, and
    ``battwin ml evaluate`` reports them separately. The rule looks at the data only, never at a model.
    """
    v = cell.capacity_ah[cell.valid]
    n = len(v)
    if n == 0:
        return Scorability(False, 0, 1.0, "no valid rows")
    soh = v / float(np.median(v[:5]))
    lo, hi = SCORABLE_SOH_BAND
    frac = float(np.mean((soh < lo) | (soh > hi)))
    if n < SCORABLE_MIN_ROWS:
        return Scorability(False, n, frac, f"{n} valid rows (< {SCORABLE_MIN_ROWS})")
    if frac > SCORABLE_MAX_OUTSIDE:
        return Scorability(
            False,
            n,
            frac,
            f"{100 * frac:.0f} % of valid rows have a contract SoH outside [{lo}, {hi}] "
            f"(> {100 * SCORABLE_MAX_OUTSIDE:.0f} %)",
        )
    return Scorability(True, n, frac, "ok")


def unscorable_cells(cells: Sequence[Cell]) -> dict[str, list[str]]:
    """Per dataset, the cells that cannot be test cells (see :func:`scorability`)."""
    out: dict[str, list[str]] = {}
    for c in cells:
        if not scorability(c).ok:
            out.setdefault(c.dataset, []).append(c.cell)
    return {ds: sorted(v) for ds, v in sorted(out.items())}
