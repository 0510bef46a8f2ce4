"""Replay a raw BMS log through the agent as if it came off a real BMS.

Format (``../shared/data/bms-logs``): CSV, optionally gzip, with at least the columns ``t_s`` (seconds
since the log's start), ``voltage_v``, ``current_a`` (positive = charging) and ``temperature_c``; other
columns (``run``, ``kind``, ``ambient_c`` …) are ignored — they are the lab's labels, and the agent must
find cycles without hints. A sample's time stamp is ``start_ts + t_s``.

Rows with an empty voltage or current (the lab logged nothing) are skipped and counted; an empty
temperature gives a sample without temperature. A row that is present but unreadable (text where a
number belongs, NaN, a time going backwards by more than a second) raises :class:`ReplayFormatError`
naming the file, line and column: data already accepted is kept, nothing is made up.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hardware.errors import DataFileError, DecodeError, SourceConfigError, SourceExhausted, SourceUnavailable
from hardware.source import Source
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

log = logging.getLogger(__name__)

REQUIRED = ("t_s", "voltage_v", "current_a")


class ReplayFormatError(DataFileError, DecodeError):
    """A log row cannot be read."""


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


class ReplaySource(Source):
    paced = False
    simulated = False

    def __init__(self, path: Path | str, start_ts: float = 0.0, source_id: str | None = None) -> None:
        self.path = Path(path)
        self.start_ts = start_ts
        self.source_id = source_id or f"replay:{self.path.name.split('.')[0]}"[:128]
        self._fh: IO[str] | None = None
        self._rows: Iterator[list[str]] | None = None
        self._cols: tuple[int, int, int, int | None] = (0, 0, 0, None)
        self.line = 1
        self.skipped = 0
        self._last_t = -math.inf

    def open(self) -> None:
        if self._fh is not None:
            return
        if not self.path.is_file():
            raise SourceConfigError(f"replay: log file {self.path} does not exist")
        try:
            self._fh = _open_text(self.path)
            reader = csv.reader(self._fh)
            header = next(reader)
        except StopIteration:
            raise SourceConfigError(f"replay: {self.path} is empty") from None
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceUnavailable(f"replay: cannot read {self.path}: {exc}") from exc
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            self.close()
            raise SourceConfigError(
                f"replay: {self.path} lacks column(s) {', '.join(missing)} (has: {', '.join(names[:12])})"
            )
        t_idx = names.index("temperature_c") if "temperature_c" in names else None
        self._cols = (names.index("t_s"), names.index("voltage_v"), names.index("current_a"), t_idx)
        self._rows = reader

    def poll(self) -> Sample:
        if self._rows is None:
            self.open()
        assert self._rows is not None
        ti, vi, ii, tempi = self._cols
        rows = self._rows
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except (OSError, EOFError, gzip.BadGzipFile, csv.Error, UnicodeDecodeError) as exc:
                raise ReplayFormatError(f"{self.path}:{self.line + 1}: cannot read: {exc}") from exc
            self.line += 1
            try:
                t_raw, v_raw, i_raw = row[ti], row[vi], row[ii]
                temp_raw = row[tempi] if tempi is not None else ""
            except IndexError:
                raise ReplayFormatError(f"{self.path}:{self.line}: row has {len(row)} fields") from None
            if not v_raw or not i_raw or not t_raw:
                self.skipped += 1
                continue
            try:  # the common case in one go; the slow path below names the bad column
                t, v, i = float(t_raw), float(v_raw), float(i_raw)
                temps = (float(temp_raw),) if temp_raw else ()
                ok = math.isfinite(t + v + i + sum(temps))
            except ValueError:
                ok = False
            if not ok:
                t = self._num(t_raw, "t_s")
                v = self._num(v_raw, "voltage_v")
                i = self._num(i_raw, "current_a")
                temps = (self._num(temp_raw, "temperature_c"),) if temp_raw else ()
            if t < self._last_t - 1.0:
                raise ReplayFormatError(f"{self.path}:{self.line}: t_s goes backwards ({t} after {self._last_t})")
            self._last_t = max(t, self._last_t)
            try:  # pydantic-core validates in Rust: cheaper than model_construct, and checks every bound
                return Sample(
                    ts=self.start_ts + t,
                    voltage_v=v,
                    current_a=i,
                    temperatures_c=temps,
                    source_id=self.source_id,
                    simulated=False,
                )
            except ValueError as exc:
                raise ReplayFormatError(f"{self.path}:{self.line}: implausible reading: {exc}") from None
        raise SourceExhausted(f"replay: end of {self.path} ({self.skipped} empty rows skipped)")

    def _num(self, raw: str, column: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ReplayFormatError(f"{self.path}:{self.line}: column {column}: {raw[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise ReplayFormatError(f"{self.path}:{self.line}: column {column}: {raw[:40]!r} is not finite")
        return value

    def close(self) -> None:
        fh, self._fh = self._fh, None
        self._rows = None
        if fh is not None:
            fh.close()


def create(url: SourceUrl, settings: SourceSettings) -> ReplaySource:
    path = url.path or url.raw.split(":", 1)[1]
    if not path:
        raise SourceConfigError("replay source needs a path: replay:PATH")
    start = url.float_option("start", settings.replay_start_ts)
    return ReplaySource(path, start_ts=start)
