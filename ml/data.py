"""Readers for cell data, offline cleaning and splits by whole cells.

Two sources, one result (:class:`Cell`):

* the per-cycle cell CSV contract (``/work/shared/data/README.md``): ``cycle`` (integer, increasing, gaps
  allowed) and ``capacity_ah`` (may be empty, zero or an outlier) are required; ``ambient_temperature_c``,
  ``elapsed_h`` and ``nominal_capacity_ah`` are optional; other columns are ignored;
* raw BMS logs (``t_s, voltage_v, current_a, temperature_c``; NASA sign: positive = charging), turned into
  cycles by the device's own :class:`CycleTracker` and :class:`HealthEstimator` so that training sees the
  capacities, cycle numbers, elapsed times and temperatures the device would.

Cleaning (for training targets only; the model's inputs are cleaned causally on the device by
``device_agent.health.capacity_cleaning.causal_clean``) is :func:`clean_cell`, rules stated there.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from device_agent.config import HealthSettings, TrackerSettings
from device_agent.health.capacity_cleaning import clean_series
from device_agent.health.estimator import HealthEstimator
from device_agent.health.fade_law import CapacityPoint
from device_agent.health.model_files import CleaningSpec
from device_agent.messages import CycleRecord
from device_agent.tracking.cycle_tracker import CycleTracker

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
        opt = {
            k: col.get(k) for k in ("ambient_temperature_c", "elapsed_h", "nominal_capacity_ah")
        }
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
        temps.append(
            p.temperature_c if p is not None and p.temperature_c is not None else math.nan
        )
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


# -- offline cleaning -------------------------------------------------------------------------------

Label = Literal["ok", "failed", "high", "excursion", "low_regime", "spike"]
HAMPEL_HALF_WINDOW = 3
HAMPEL_SIGMAS = 3.0
HAMPEL_MIN_REL = 0.01


@dataclass(frozen=True)
class CleanSeries:
    """The valid rows of a cell with a label each; ``segment`` numbers the regimes (level shifts)."""

    index: np.ndarray  # row index in the file
    cycles: np.ndarray
    capacity_ah: np.ndarray
    label: np.ndarray  # Label per valid row
    segment: np.ndarray  # int per valid row

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.label == "ok")

    def counts(self) -> dict[str, int]:
        labels, n = np.unique(self.label, return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, n, strict=True)}


def clean_cell(cell: Cell, rules: CleaningSpec | None = None) -> CleanSeries:
    """Label every valid row of a cell (offline: the whole series is known). Rules, in order:

    1. invalid rows (missing, zero, negative capacity) are not in the series at all;
    2. the device's causal rules (``capacity_cleaning.clean_series``): a capacity below ``low_frac`` × the median of
       the last ``ref_points`` kept capacities is a failed run (``failed``), above ``high_frac`` × that
       median a gross outlier (``high``); ``shift_points`` of them in a row on one side start a new segment
       (regime); a regime the cell returns from is an ``excursion`` (e.g. a block of cold, high-current runs);
    3. a segment whose median capacity is below ``low_frac`` × the highest segment median is a regime the
       cell only visited (a block of runs at other conditions at the start): ``low_regime``;
    4. within the rest, a Hampel filter (centred window of 7, 3 robust sigmas and at least 1 %) marks
       isolated spikes — the first cycles of a capacity regeneration jump after a rest, stray readings —
       as ``spike``. Regeneration that decays over several cycles is real capacity and stays ``ok``.
    """
    rules = rules or CleaningSpec()
    idx = cell.valid_indices()
    cyc = cell.cycles[idx]
    cap = cell.capacity_ah[idx]
    state = clean_series(cap.tolist(), rules)
    label = np.array(state.label, dtype=object)
    segment = np.array(state.segment, dtype=int)
    ok = label == "ok"
    levels = {int(s): float(np.median(cap[ok & (segment == s)])) for s in np.unique(segment[ok])}
    if levels:
        top = max(levels.values())
        for s, lev in levels.items():
            if lev < rules.low_frac * top:
                label[ok & (segment == s)] = "low_regime"
    ok = label == "ok"
    for s in np.unique(segment[ok]):
        members = np.nonzero(ok & (segment == s))[0]
        vals = cap[members]
        for a, j in enumerate(members):
            lo, hi = max(0, a - HAMPEL_HALF_WINDOW), min(len(members), a + HAMPEL_HALF_WINDOW + 1)
            win = vals[lo:hi]
            if len(win) < 4:
                continue
            med = float(np.median(win))
            mad = 1.4826 * float(np.median(np.abs(win - med)))
            if abs(vals[a] - med) > max(HAMPEL_SIGMAS * mad, HAMPEL_MIN_REL * med):
                label[j] = "spike"
    return CleanSeries(index=idx, cycles=cyc, capacity_ah=cap, label=label.astype(str), segment=segment)


# -- splits -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: dict[str, list[str]]

    def role(self, dataset: str, cell: str) -> str:
        for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            if cell in part.get(dataset, []):
                return name
        return "unused"


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
            False, n, frac,
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


def _systematic_pick(names: Sequence[str], frac: float, rng: random.Random) -> list[str]:
    """One random name from each consecutive block of round(1/frac) names (sorted): a stratified pick."""
    if frac <= 0 or len(names) < 2:
        return []
    block = max(1, round(1.0 / frac))
    picked = []
    for s in range(0, len(names), block):
        chunk = list(names[s : s + block])
        picked.append(rng.choice(chunk))
    return picked


def split_cells(
    cells: Sequence[Cell],
    test_frac: float,
    val_frac: float,
    seed: int,
    *,
    test_frac_by_dataset: dict[str, float] | None = None,
) -> Split:
    """Split by whole cells, per dataset: sorted by name, one test cell from each block of 1/test_frac
    scorable cells (seeded; see :func:`scorability` — unscorable cells only ever train), then validation
    cells the same way from the remaining scorable cells. A cell is in exactly one part; every dataset
    keeps at least one training cell. ``test_frac_by_dataset`` overrides ``test_frac`` for the datasets
    it names."""
    fracs = dict(test_frac_by_dataset or {})
    if not all(0.0 <= f < 1.0 for f in [test_frac, val_frac, *fracs.values()]):
        raise ValueError("test_frac, val_frac and test_frac_by_dataset values must be in [0, 1)")
    by_ds: dict[str, list[str]] = {}
    unscorable: set[tuple[str, str]] = set()
    for c in cells:
        by_ds.setdefault(c.dataset, []).append(c.cell)
        if not scorability(c).ok:
            unscorable.add((c.dataset, c.cell))
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    for ds in sorted(by_ds):
        names = sorted(set(by_ds[ds]))
        rng = random.Random(f"{seed}:{ds}")
        te = _systematic_pick([n for n in names if (ds, n) not in unscorable], fracs.get(ds, test_frac), rng)
        rest = [n for n in names if n not in te]
        scorable_rest = [n for n in rest if (ds, n) not in unscorable]
        va = _systematic_pick(scorable_rest, val_frac, rng) if len(rest) > 2 else []
        tr = [n for n in rest if n not in va]
        if not tr:
            tr, te = te[:1], te[1:]
        train[ds], val[ds], test[ds] = tr, va, te
    return Split(train=train, val=val, test=test)


def fingerprint(cells: Sequence[Cell], split: Split) -> str:
    """sha256 over the files' contents (their sha256) and the cell lists: independent of paths and git."""
    files = sorted((c.dataset, c.cell, c.sha256) for c in cells)
    payload = {"files": files, "train": split.train, "val": split.val, "test": split.test}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
