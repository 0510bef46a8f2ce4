"""Turn the lake's cycle records into per-cycle cell CSVs in the project's shared contract.

Contract (``/work/shared/data/README.md``, read by ``ml.data.read_cell_csv``): columns ``cycle`` (integer,
strictly increasing, gaps allowed) and ``capacity_ah`` (may be empty), optional ``ambient_temperature_c``
and ``elapsed_h``. One CSV per thing (per battery: a thing whose records carry more than one ``source_id``
had its battery or source changed, and each source becomes its own file, ``<thing>__<source>.csv``).

The rows are exactly what ``ml.data.read_bms_log`` derives from a raw log with the device's own tracker and
estimator, so training sees the same features the device computes: one row per discharge, ``cycle`` = the
tracker's cycle index, ``capacity_ah`` only for a complete discharge with a positive capacity, and for those
rows ``ambient_temperature_c`` = the discharge's mean cell temperature and ``elapsed_h`` = hours from the
start of the first record of that battery to the end of the discharge (the estimator's ``first_ts`` rule).
Indices that do not increase (an agent reinstalled without its spool restarts at cycle 1) are shifted to
continue the sequence; re-sent copies of a record (same index and end time) count once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CSV_COLUMNS = ("cycle", "capacity_ah", "ambient_temperature_c", "elapsed_h")
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class LakeCycle:
    """The fields of a lake cycle row that the training set uses."""

    thing: str
    source_id: str
    msg_id: str
    index: int
    kind: str
    start_ts: float
    end_ts: float
    capacity_ah: float | None
    complete: bool
    mean_temperature_c: float | None
    simulated: bool

    @classmethod
    def from_row(cls, row: dict[str, Any], thing: str | None = None) -> LakeCycle | None:
        """A lake row → LakeCycle, or None if it lacks what training needs."""
        try:
            cap = row.get("capacity_ah")
            temp = row.get("mean_temperature_c")
            return cls(
                thing=str(thing or row["thing"]),
                source_id=str(row.get("source_id") or "unknown"),
                msg_id=str(row.get("msg_id") or ""),
                index=int(row["index"]),
                kind=str(row["kind"]),
                start_ts=float(row["start_ts"]),
                end_ts=float(row["end_ts"]),
                capacity_ah=float(cap) if cap is not None else None,
                complete=bool(row.get("complete", False)),
                mean_temperature_c=float(temp) if temp is not None else None,
                simulated=bool(row.get("simulated", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def valid_capacity(self) -> bool:
        c = self.capacity_ah
        return self.kind == "discharge" and self.complete and c is not None and math.isfinite(c) and c > 0


@dataclass(frozen=True)
class CellCsv:
    name: str  # file name without .csv
    thing: str
    source_id: str
    text: str
    rows: int
    valid_rows: int
    first_ts: float
    last_ts: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:.10g}"


def _file_name(thing: str, source_id: str, several: bool) -> str:
    name = thing if not several else f"{thing}__{source_id}"
    return _SAFE.sub("_", name).strip("._") or "cell"


def build_cell_csvs(records: Iterable[LakeCycle], include_simulated: bool = False) -> list[CellCsv]:
    """Group by (thing, source) and write one contract CSV each (sorted by file name)."""
    groups: dict[tuple[str, str], dict[tuple[int, str, float], LakeCycle]] = defaultdict(dict)
    for rec in records:
        if rec.simulated and not include_simulated:
            continue
        # a re-sent copy has the same index, kind and end time (even under a new message id)
        groups[(rec.thing, rec.source_id)].setdefault((rec.index, rec.kind, round(rec.end_ts, 3)), rec)
    sources: dict[str, int] = defaultdict(int)
    for thing, _src in groups:
        sources[thing] += 1
    out: list[CellCsv] = []
    for (thing, source_id), by_key in groups.items():
        recs = sorted(by_key.values(), key=lambda r: (r.end_ts, r.start_ts, r.index))
        first_ts = min(r.start_ts for r in recs)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        prev: int | None = None
        offset = 0
        n = valid = 0
        last_ts = first_ts
        for rec in recs:
            if rec.kind != "discharge":
                continue
            cycle = rec.index + offset
            if prev is not None and cycle <= prev:
                offset += prev + 1 - cycle
                cycle = prev + 1
            prev = cycle
            n += 1
            last_ts = max(last_ts, rec.end_ts)
            if rec.valid_capacity:
                valid += 1
                writer.writerow(
                    [cycle, _fmt(rec.capacity_ah), _fmt(rec.mean_temperature_c), _fmt((rec.end_ts - first_ts) / 3600.0)]
                )
            else:
                writer.writerow([cycle, "", "", ""])
        if n == 0:
            continue
        out.append(
            CellCsv(
                name=_file_name(thing, source_id, sources[thing] > 1),
                thing=thing,
                source_id=source_id,
                text=buf.getvalue(),
                rows=n,
                valid_rows=valid,
                first_ts=first_ts,
                last_ts=last_ts,
            )
        )
    out.sort(key=lambda c: c.name)
    names = [c.name for c in out]
    if len(set(names)) != len(names):  # two things that sanitise to the same name: make them unique
        seen: dict[str, int] = {}
        renamed = []
        for c in out:
            k = seen.get(c.name, 0)
            seen[c.name] = k + 1
            renamed.append(c if k == 0 else CellCsv(**{**c.__dict__, "name": f"{c.name}-{k}"}))
        out = renamed
    return out


def fingerprint(cells: Iterable[CellCsv]) -> str:
    h = hashlib.sha256()
    for c in sorted(cells, key=lambda c: c.name):
        h.update(c.name.encode() + b"\0" + c.sha256.encode() + b"\n")
    return h.hexdigest()
